"""Tap identities: every tap of a run recomputed in numpy float64 from the taps it depends on and
the weights, independently of transformers' code (formulas from /work/shared/qwen3next.md).

Each check feeds the *captured* inputs of one step, so errors do not accumulate and a mislabelled
tap, a wrong split, a wrong head layout or a wrong formula inside transformers shows up at the
step where it happens. The delta rule is re-run as a plain float64 token-by-token recurrence (a
third implementation beside transformers' chunked and recurrent functions).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    den = float(np.linalg.norm(ref))
    num = float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(ref, np.float64)))
    return num / den if den > 0 else num


def _rms(x: np.ndarray, w: np.ndarray, eps: float, centred: bool = True) -> np.ndarray:
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return y * (1.0 + w) if centred else y * w


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _swiglu(x: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
    return (_silu(x @ gate.T) * (x @ up.T)) @ down.T


def _delta_rule(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray, beta: np.ndarray,
                s0: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """q, k [T,H,DK] (already L2-normalised), v [T,H,DV], g, beta [T,H] -> o [T,H,DV], S [H,DK,DV]."""
    t_len, h, dk = q.shape
    s = np.zeros((h, dk, v.shape[-1])) if s0 is None else s0.copy()
    q = q / np.sqrt(dk)
    out = np.zeros((t_len, h, v.shape[-1]))
    for t in range(t_len):
        s = s * np.exp(g[t])[:, None, None]
        u = beta[t][:, None] * (v[t] - np.einsum("hk,hkv->hv", k[t], s))
        s = s + np.einsum("hk,hv->hkv", k[t], u)
        out[t] = np.einsum("hk,hkv->hv", q[t], s)
    return out, s


def check(taps: dict[str, np.ndarray], ids: np.ndarray, logits: np.ndarray, mtp_logits: np.ndarray | None,
          cfg: Any, w: Any) -> dict[str, float]:
    """Returns {check name: rel_l2} (float64). cfg: the Qwen3NextConfig; w: module state (float64,
    keys as in model.state_dict() plus 'mtp.' + the MTP module's keys)."""
    r: dict[str, float] = {}
    eps = cfg.rms_norm_eps
    tied_lm = w["lm_head.weight"] if "lm_head.weight" in w else w["model.embed_tokens.weight"]
    r["model.embed_tokens.out"] = _rel(w["model.embed_tokens.weight"][ids], taps["model.embed_tokens.out"])
    prev = "model.embed_tokens.out"
    for i, kind in enumerate(cfg.layer_types):
        _layer(r, taps, w, cfg, f"model.layers.{i}", kind, prev, eps)
        prev = f"model.layers.{i}.out"
    r["model.norm.out"] = _rel(_rms(taps[prev], w["model.norm.weight"], eps), taps["model.norm.out"])
    r["logits"] = _rel(taps["model.norm.out"] @ tied_lm.T, logits)
    if mtp_logits is not None and "mtp.fc.out" in taps:
        e = w["model.embed_tokens.weight"][ids[1:]]
        r["mtp.pre_fc_norm_embedding.out"] = _rel(_rms(e, w["mtp.pre_fc_norm_embedding.weight"], eps),
                                                  taps["mtp.pre_fc_norm_embedding.out"])
        r["mtp.pre_fc_norm_hidden.out"] = _rel(_rms(taps["model.norm.out"][:-1], w["mtp.pre_fc_norm_hidden.weight"], eps),
                                               taps["mtp.pre_fc_norm_hidden.out"])
        cat = np.concatenate([taps["mtp.pre_fc_norm_embedding.out"], taps["mtp.pre_fc_norm_hidden.out"]], -1)
        r["mtp.fc.out"] = _rel(cat @ w["mtp.fc.weight"].T, taps["mtp.fc.out"])
        _layer(r, taps, w, cfg, "mtp.layers.0", "full_attention", "mtp.fc.out", eps)
        r["mtp.norm.out"] = _rel(_rms(taps["mtp.layers.0.out"], w["mtp.norm.weight"], eps), taps["mtp.norm.out"])
        r["mtp_logits"] = _rel(taps["mtp.norm.out"] @ tied_lm.T, mtp_logits)
    return r


def _layer(r: dict[str, float], taps: dict[str, np.ndarray], w: dict[str, np.ndarray], cfg: Any, p: str, kind: str,
           prev: str, eps: float) -> None:
    x = taps[f"{p}.in"]
    r[f"{p}.in"] = _rel(taps[prev], x)
    r[f"{p}.input_layernorm.out"] = _rel(_rms(x, w[f"{p}.input_layernorm.weight"], eps), taps[f"{p}.input_layernorm.out"])
    h = taps[f"{p}.input_layernorm.out"]
    n_tok = h.shape[0]
    if kind == "linear_attention":
        a = f"{p}.linear_attn"
        nk, nv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
        dk, dv, rep = cfg.linear_key_head_dim, cfg.linear_value_head_dim, nv // nk
        r[a + ".in_proj_qkvz.out"] = _rel(h @ w[a + ".in_proj_qkvz.weight"].T, taps[a + ".in_proj_qkvz.out"])
        r[a + ".in_proj_ba.out"] = _rel(h @ w[a + ".in_proj_ba.weight"].T, taps[a + ".in_proj_ba.out"])
        grp = taps[a + ".in_proj_qkvz.out"].reshape(n_tok, nk, 2 * dk + 2 * rep * dv)
        r[a + ".q"] = _rel(grp[..., :dk], taps[a + ".q"])
        r[a + ".k"] = _rel(grp[..., dk:2 * dk], taps[a + ".k"])
        r[a + ".v"] = _rel(grp[..., 2 * dk:2 * dk + rep * dv].reshape(n_tok, nv, dv), taps[a + ".v"])
        r[a + ".z"] = _rel(grp[..., 2 * dk + rep * dv:].reshape(n_tok, nv, dv), taps[a + ".z"])
        ba = taps[a + ".in_proj_ba.out"].reshape(n_tok, nk, 2 * rep)
        r[a + ".b"] = _rel(ba[..., :rep].reshape(n_tok, nv), taps[a + ".b"])
        r[a + ".a"] = _rel(ba[..., rep:].reshape(n_tok, nv), taps[a + ".a"])
        mixed = np.concatenate([taps[a + ".q"].reshape(n_tok, -1), taps[a + ".k"].reshape(n_tok, -1),
                                taps[a + ".v"].reshape(n_tok, -1)], -1)
        cw = w[a + ".conv1d.weight"][:, 0, :]
        kc = cw.shape[1]
        pad = np.concatenate([np.zeros((kc - 1, mixed.shape[1])), mixed], 0)
        conv = _silu(sum(pad[j:j + n_tok] * cw[:, j] for j in range(kc)))
        r[a + ".conv1d.out"] = _rel(conv, taps[a + ".conv1d.out"])
        c = taps[a + ".conv1d.out"]
        qc = c[:, :nk * dk].reshape(n_tok, nk, dk)
        kk = c[:, nk * dk:2 * nk * dk].reshape(n_tok, nk, dk)
        vc = c[:, 2 * nk * dk:].reshape(n_tok, nv, dv)
        l2 = lambda y: y / np.sqrt((y * y).sum(-1, keepdims=True) + 1e-6)  # noqa: E731
        r[a + ".q_l2"] = _rel(l2(qc), taps[a + ".q_l2"])
        r[a + ".k_l2"] = _rel(l2(kk), taps[a + ".k_l2"])
        sp = np.logaddexp(0.0, taps[a + ".a"] + w[a + ".dt_bias"])
        r[a + ".g"] = _rel(-np.exp(w[a + ".A_log"]) * sp, taps[a + ".g"])
        r[a + ".beta"] = _rel(_sigmoid(taps[a + ".b"]), taps[a + ".beta"])
        o, s = _delta_rule(np.repeat(taps[a + ".q_l2"], rep, 1), np.repeat(taps[a + ".k_l2"], rep, 1), vc,
                           taps[a + ".g"], taps[a + ".beta"], None)
        r[a + ".core_out"] = _rel(o, taps[a + ".core_out"])
        r[a + ".final_state"] = _rel(s, taps[a + ".final_state"])
        co, z = taps[a + ".core_out"], taps[a + ".z"]
        r[a + ".norm.out"] = _rel(_rms(co, w[a + ".norm.weight"], eps, centred=False) * _silu(z), taps[a + ".norm.out"])
        r[a + ".out"] = _rel(taps[a + ".norm.out"].reshape(n_tok, -1) @ w[a + ".out_proj.weight"].T, taps[a + ".out"])
        mixer_out = taps[a + ".out"]
    else:
        a = f"{p}.self_attn"
        hd, nh, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        r[a + ".q_proj.out"] = _rel(h @ w[a + ".q_proj.weight"].T, taps[a + ".q_proj.out"])
        r[a + ".k_proj.out"] = _rel(h @ w[a + ".k_proj.weight"].T, taps[a + ".k_proj.out"])
        r[a + ".v_proj.out"] = _rel(h @ w[a + ".v_proj.weight"].T, taps[a + ".v_proj.out"])
        qg = taps[a + ".q_proj.out"].reshape(n_tok, nh, 2 * hd)
        r[a + ".gate"] = _rel(qg[..., hd:], taps[a + ".gate"])
        r[a + ".q_norm.out"] = _rel(_rms(qg[..., :hd], w[a + ".q_norm.weight"], eps), taps[a + ".q_norm.out"])
        r[a + ".k_norm.out"] = _rel(_rms(taps[a + ".k_proj.out"].reshape(n_tok, nkv, hd), w[a + ".k_norm.weight"], eps),
                                    taps[a + ".k_norm.out"])
        rope = cfg.rope_parameters
        rot = int(hd * rope.get("partial_rotary_factor", 1.0))
        inv = 1.0 / (rope["rope_theta"] ** (np.arange(0, rot, 2) / rot))
        ang = np.arange(n_tok)[:, None] * inv[None, :]
        cos, sin = np.cos(np.concatenate([ang, ang], -1))[:, None], np.sin(np.concatenate([ang, ang], -1))[:, None]

        def apply(y: np.ndarray) -> np.ndarray:
            yr, yp = y[..., :rot], y[..., rot:]
            half = rot // 2
            rh = np.concatenate([-yr[..., half:], yr[..., :half]], -1)
            return np.concatenate([yr * cos + rh * sin, yp], -1)
        r[a + ".q_rope"] = _rel(apply(taps[a + ".q_norm.out"]), taps[a + ".q_rope"])
        r[a + ".k_rope"] = _rel(apply(taps[a + ".k_norm.out"]), taps[a + ".k_rope"])
        q, k = taps[a + ".q_rope"], taps[a + ".k_rope"]
        v = taps[a + ".v_proj.out"].reshape(n_tok, nkv, hd)
        grp_size = nh // nkv
        att = np.zeros((n_tok, nh, hd))
        mask = np.triu(np.full((n_tok, n_tok), -np.inf), 1)
        for hh in range(nh):
            kv = hh // grp_size
            sc = q[:, hh] @ k[:, kv].T / np.sqrt(hd) + mask
            att[:, hh] = _softmax(sc) @ v[:, kv]
        r[a + ".attn_out"] = _rel(att, taps[a + ".attn_out"])
        r[a + ".gated_out"] = _rel((taps[a + ".attn_out"] * _sigmoid(taps[a + ".gate"])).reshape(n_tok, -1),
                                   taps[a + ".gated_out"])
        r[a + ".out"] = _rel(taps[a + ".gated_out"] @ w[a + ".o_proj.weight"].T, taps[a + ".out"])
        mixer_out = taps[a + ".out"]
    r[f"{p}.post_attention_layernorm.in"] = _rel(x + mixer_out, taps[f"{p}.post_attention_layernorm.in"])
    y = taps[f"{p}.post_attention_layernorm.in"]
    r[f"{p}.post_attention_layernorm.out"] = _rel(_rms(y, w[f"{p}.post_attention_layernorm.weight"], eps),
                                                  taps[f"{p}.post_attention_layernorm.out"])
    hm = taps[f"{p}.post_attention_layernorm.out"]
    m = f"{p}.mlp"
    if m + ".gate.logits" in taps:
        r[m + ".gate.logits"] = _rel(hm @ w[m + ".gate.weight"].T, taps[m + ".gate.logits"])
        probs = _softmax(taps[m + ".gate.logits"])
        r[m + ".gate.probs"] = _rel(probs, taps[m + ".gate.probs"])
        kk_ = cfg.num_experts_per_tok
        idx = taps[m + ".gate.topk_idx"].astype(np.int64)
        mine = np.argsort(-taps[m + ".gate.probs"], -1, kind="stable")[:, :kk_]
        r[m + ".gate.topk_idx"] = float(np.mean(np.sort(mine, -1) != np.sort(idx, -1)))
        sel = np.take_along_axis(taps[m + ".gate.probs"], idx, -1)
        if cfg.norm_topk_prob:
            sel = sel / sel.sum(-1, keepdims=True)
        r[m + ".gate.topk_weight"] = _rel(sel, taps[m + ".gate.topk_weight"])
        gu, dn = w[m + ".experts.gate_up_proj"], w[m + ".experts.down_proj"]
        inter = gu.shape[1] // 2
        ex = np.zeros_like(hm)
        for t in range(n_tok):
            for j in range(kk_):
                e = idx[t, j]
                ex[t] += taps[m + ".gate.topk_weight"][t, j] * _swiglu(hm[t:t + 1], gu[e, :inter], gu[e, inter:], dn[e])[0]
        r[m + ".experts.out"] = _rel(ex, taps[m + ".experts.out"])
        r[m + ".shared_expert.out"] = _rel(_swiglu(hm, w[m + ".shared_expert.gate_proj.weight"],
                                                   w[m + ".shared_expert.up_proj.weight"],
                                                   w[m + ".shared_expert.down_proj.weight"]), taps[m + ".shared_expert.out"])
        r[m + ".shared_expert_gate.out"] = _rel(hm @ w[m + ".shared_expert_gate.weight"].T, taps[m + ".shared_expert_gate.out"])
        r[m + ".out"] = _rel(taps[m + ".experts.out"] + _sigmoid(taps[m + ".shared_expert_gate.out"]) *
                             taps[m + ".shared_expert.out"], taps[m + ".out"])
    else:
        r[m + ".out"] = _rel(_swiglu(hm, w[m + ".gate_proj.weight"], w[m + ".up_proj.weight"], w[m + ".down_proj.weight"]),
                             taps[m + ".out"])
    r[f"{p}.out"] = _rel(y + taps[m + ".out"], taps[f"{p}.out"])
