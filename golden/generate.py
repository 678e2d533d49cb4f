#!/usr/bin/env python3
"""Dumps every tensor of a transformers Qwen3-Next run into an HDF5 golden (docs/golden-format.md).

    golden/.venv/bin/python golden/generate.py --preset tiny --out golden/data/tiny_f32.h5
    golden/.venv/bin/python golden/generate.py --preset tiny --mode decode --prefill 5 --out golden/data/tiny_decode.h5
    golden/.venv/bin/python golden/generate.py --mode delta-rule --out golden/data/delta_rule.h5
    golden/.venv/bin/python golden/generate.py --checkpoint DIR --seq-len 32 --out run.h5

The model is transformers' Qwen3NextForCausalLM (eager attention, eager experts, torch delta
rule, on CPU), weights random and seeded (golden/randomize.py) or read from --checkpoint. Before
writing, the generator audits transformers against itself and stops when a check is out of its
band, unless --allow-inconsistent: float32 vs float64 tap by tap (stored per tap as the noise
floor), prefill + decode vs full forward (logits and caches), chunked vs recurrent delta rule on
the captured inputs, float32/float64 routing agreement, every tap against a numpy float64
recomputation from its inputs (golden/identities.py), fla vs torch where fla runs, and
transformers' from_pretrained reading the written checkpoint back into the same weights.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import math
import os
import platform
import sys
from typing import Any

import h5py
import numpy as np
import safetensors
import torch
import transformers
import transformers.models.qwen3_next.modeling_qwen3_next as qn
from safetensors import safe_open
from transformers import DynamicCache, Qwen3NextConfig, Qwen3NextForCausalLM
from transformers.utils import logging as hf_logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture import DISPATCHED, Capture, Recorder, torch_path  # noqa: E402
import identities  # noqa: E402
from mtp import Qwen3NextMTP  # noqa: E402
from presets import preset_config  # noqa: E402
from randomize import hub_shapes, random_hub_weights, to_module_state, write_checkpoint  # noqa: E402

FORMAT_VERSION = 1
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}

# Self-audit bands (relative L2). Measured values sit 1-3 orders of magnitude below.
BAND_F32_VS_F64_LOGITS = 1e-4
BAND_DECODE_VS_FULL = {"float32": 1e-4, "float64": 1e-4}
BAND_CHUNKED_VS_RECURRENT = 1e-4
BAND_TAP_IDENTITIES = 1e-4  # each tap recomputed in numpy float64 from its captured inputs
BAND_FLA_VS_TORCH = 5e-3  # fla's chunk kernel runs its dot products in TF32 (transformers' own test tolerance)

F64_NOTE = ("transformers casts to float32 inside a float64 run: RMSNorm and gated RMSNorm "
            "(x.float()), both delta-rule functions (inputs .to(float32)), softmax of attention and "
            "router (dtype=float32), RoPE cos/sin (computed in float32), g (A_log.float(), a.float())")


# ---- small helpers ------------------------------------------------------------------------

def rel_l2(a: torch.Tensor, ref: torch.Tensor) -> float:
    a64, r64 = a.detach().to(torch.float64), ref.detach().to(torch.float64)
    den = torch.linalg.vector_norm(r64).item()
    num = torch.linalg.vector_norm(a64 - r64).item()
    return num / den if den > 0 else num


def max_abs(a: torch.Tensor, ref: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return (a.detach().to(torch.float64) - ref.detach().to(torch.float64)).abs().max().item()


def stored(t: torch.Tensor, dtype: str) -> np.ndarray:
    """Storage dtype: int64 stays int64; float taps are float64 in float64 goldens, else float32."""
    if not t.is_floating_point():
        return t.detach().to(torch.int64).cpu().numpy()
    return t.detach().to(torch.float64 if dtype == "float64" else torch.float32).cpu().numpy()


def versions() -> dict[str, str]:
    return {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "h5py_version": h5py.__version__,
        "safetensors_version": safetensors.__version__,
        "python_version": platform.python_version(),
    }


def installed(pkg: str) -> int:
    return 1 if importlib.util.find_spec(pkg) is not None else 0


def kernel_path(kernels: str) -> str:
    """`torch` when transformers' torch functions ran, else the kernel packages it dispatched to."""
    if kernels == "torch":
        return "torch"
    return "+".join(p for p in ("fla", "causal_conv1d") if installed(p)) or "torch"


# ---- model construction -------------------------------------------------------------------

def make_config(cfg: dict[str, Any]) -> Qwen3NextConfig:
    kw = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "num_nextn_predict_layers",
                                                      "transformers_version", "dtype", "torch_dtype")}
    if "rope_parameters" not in kw:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": kw.pop("rope_theta", 10000.0),
                                 "partial_rotary_factor": kw.get("partial_rotary_factor", 0.25)}
    else:
        kw.pop("rope_theta", None)
    config = Qwen3NextConfig(**kw)
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    return config


def config_json(config: Qwen3NextConfig, n_mtp: int) -> dict[str, Any]:
    d = json.loads(config.to_json_string())
    for k in ("_attn_implementation", "_experts_implementation", "dtype", "torch_dtype"):
        d.pop(k, None)
    d["architectures"] = ["Qwen3NextForCausalLM"]
    if n_mtp:
        d["num_nextn_predict_layers"] = n_mtp
    return d


def build(config: Qwen3NextConfig, n_mtp: int) -> tuple[Qwen3NextForCausalLM, Qwen3NextMTP | None]:
    torch.manual_seed(0)  # module init is overwritten; seeded anyway so nothing depends on global state
    model = Qwen3NextForCausalLM(config).eval()
    assert model.config._attn_implementation == "eager", model.config._attn_implementation
    assert model.config._experts_implementation == "eager", model.config._experts_implementation
    mtp = Qwen3NextMTP(model.config).eval() if n_mtp else None
    return model, mtp


def read_checkpoint(folder: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    hub: dict[str, np.ndarray] = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        with safe_open(path, "pt") as f:
            for k in f.keys():
                hub[k] = f.get_tensor(k).to(torch.float32).numpy()
    if not hub:
        raise SystemExit(f"generate.py: {folder}: no *.safetensors files")
    return cfg, hub


def load_weights(model: torch.nn.Module, mtp: torch.nn.Module | None, hub: dict[str, np.ndarray]) -> None:
    model.load_state_dict(to_module_state(hub, model), strict=True)
    if mtp is not None:
        mtp.load_state_dict(to_module_state(hub, mtp, "mtp."), strict=True)


# ---- runs ---------------------------------------------------------------------------------

class LazyWeights:
    """Module state as float64 numpy arrays, converted on access (real-1l would need 6 GB at once)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def __contains__(self, key: str) -> bool:
        return key in self.state

    def __getitem__(self, key: str) -> np.ndarray:
        return self.state[key].detach().to(torch.float64).numpy()


def tap_identities(run: "Run", ids: torch.Tensor, config: Qwen3NextConfig, state: dict[str, torch.Tensor]) -> tuple[float, str]:
    """Worst rel_l2 (and its tap) of golden/identities.py's numpy recomputation of every tap."""
    taps = {k: v.detach().to(torch.float64).numpy() for k, v in run.taps.items()}
    res = identities.check(taps, ids[0].numpy(), run.logits.to(torch.float64).numpy(),
                           None if run.mtp_logits is None else run.mtp_logits.to(torch.float64).numpy(),
                           config, LazyWeights(state))
    missing = [k for k in taps if k not in res]
    if missing:
        raise RuntimeError(f"identities: no check for taps {missing[:5]}")
    name = max(res, key=lambda k: res[k])
    return res[name], name


class Run:
    """Taps, logits and delta-rule calls of one full forward in one dtype."""

    def __init__(self) -> None:
        self.taps: dict[str, torch.Tensor] = {}
        self.logits: torch.Tensor | None = None
        self.mtp_logits: torch.Tensor | None = None
        self.delta_calls: list[dict[str, Any]] = []


@torch.no_grad()
def full_forward(model: Qwen3NextForCausalLM, mtp: Qwen3NextMTP | None, ids: torch.Tensor) -> Run:
    rec = Recorder()
    mods: list[tuple[str, torch.nn.Module]] = [("", model)]
    if mtp is not None:
        mods.append(("mtp.", mtp))
    run = Run()
    with Capture(rec, mods):
        out = model(input_ids=ids, use_cache=False)
        run.logits = out.logits[0].clone()
        if mtp is not None and ids.shape[1] > 1:
            hidden = rec.taps["model.norm.out"][None, :-1]
            rec.on = False  # the shared embedding is not a tap of its own here
            next_embeds = model.model.embed_tokens(ids[:, 1:])
            rec.on = True
            run.mtp_logits = mtp(next_embeds, hidden, model.model.rotary_emb, model.lm_head)[0].clone()
    run.taps = rec.taps
    run.delta_calls = rec.delta_calls
    return run


def snapshot_cache(cache: DynamicCache, config: Qwen3NextConfig) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for i, kind in enumerate(config.layer_types):
        layer = cache.layers[i]
        if kind == "linear_attention":
            out[f"model.layers.{i}.linear_attn.conv_state"] = layer.conv_states[0][0].clone()
            out[f"model.layers.{i}.linear_attn.recurrent_state"] = layer.recurrent_states[0][0].clone()
        else:
            out[f"model.layers.{i}.self_attn.key_cache"] = layer.keys[0].transpose(0, 1).clone()
            out[f"model.layers.{i}.self_attn.value_cache"] = layer.values[0].transpose(0, 1).clone()
    return out


@torch.no_grad()
def decode_run(model: Qwen3NextForCausalLM, ids: torch.Tensor, prefill: int, record: bool = False
               ) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]], dict[str, dict[str, torch.Tensor]]]:
    """Prefill `prefill` tokens through a DynamicCache, then one token at a time (transformers'
    own cache; no offloading). Returns logits [T, V], cache snapshots and, when `record`, the
    taps of every one-token step."""
    cache = DynamicCache(config=model.config)
    rows: list[torch.Tensor] = []
    caches: dict[str, dict[str, torch.Tensor]] = {}
    step_taps: dict[str, dict[str, torch.Tensor]] = {}
    out = model(input_ids=ids[:, :prefill], past_key_values=cache, use_cache=True)
    rows.append(out.logits[0])
    caches["prefill"] = snapshot_cache(cache, model.config)
    for s, t in enumerate(range(prefill, ids.shape[1])):
        step = f"step_{s:03d}"
        if record:
            rec = Recorder()
            with Capture(rec, [("", model)]):
                out = model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            step_taps[step] = rec.taps
        else:
            out = model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
        rows.append(out.logits[0])
        caches[step] = snapshot_cache(cache, model.config)
    return torch.cat(rows, 0), caches, step_taps


def router_margin(taps: dict[str, torch.Tensor]) -> float:
    """Smallest gap between the K-th and (K+1)-th router logit over all tokens and MoE blocks
    (inf when there is no router or K = E)."""
    worst = math.inf
    for name, idx in taps.items():
        if name.endswith(".gate.topk_idx"):
            logits = taps[name[: -len("topk_idx")] + "logits"].to(torch.float64)
            k = idx.shape[-1]
            if k < logits.shape[-1]:
                srt = torch.sort(logits, -1, descending=True).values
                worst = min(worst, (srt[:, k - 1] - srt[:, k]).min().item())
    return worst


def decode_taps_vs_full(steps: dict[str, dict[str, torch.Tensor]], taps: dict[str, torch.Tensor], prefill: int,
                        band: float) -> tuple[float, str]:
    """Each tap of the one-token decode steps, stacked over the steps, against the full forward's
    rows prefill..T-1 (final_state: the last step's against the full forward's; topk_idx: the
    fraction of tokens choosing another set). Returns the worst rel_l2 and the name of the first
    tap, in execution order, that is out of `band` (else of the worst one)."""
    if not steps:
        return 0.0, ""
    worst, worst_name, first_bad = 0.0, "", ""
    order = sorted(steps)
    for name in steps[order[0]]:
        if name.endswith(".final_state"):
            e = rel_l2(steps[order[-1]][name], taps[name])
        else:
            a = torch.cat([steps[s][name] for s in order], 0)
            ref = taps[name][prefill:]
            if a.is_floating_point():
                e = rel_l2(a, ref)
            else:
                e = float((torch.sort(a, -1).values != torch.sort(ref, -1).values).any(-1).double().mean())
        if e >= worst:
            worst, worst_name = e, name
        if not e <= band and not first_bad:
            first_bad = name
    return worst, first_bad or worst_name


def caches_vs_full(cache: dict[str, torch.Tensor], taps: dict[str, torch.Tensor], config: Qwen3NextConfig) -> tuple[float, str]:
    """The cache after the last decode step against what the full forward implies: recurrent state
    = the full forward's final_state, KV cache = k_rope / v_proj of every token, conv state = the
    last Kc pre-conv columns (q, k, v) zero-padded on the left. Worst rel_l2 and its cache name."""
    worst, worst_name = 0.0, ""
    kc = config.linear_conv_kernel_dim
    for i, kind in enumerate(config.layer_types):
        if kind == "linear_attention":
            p = f"model.layers.{i}.linear_attn"
            n_tok = taps[p + ".q"].shape[0]
            mixed = torch.cat([taps[p + "." + x].reshape(n_tok, -1) for x in ("q", "k", "v")], -1).T
            if n_tok < kc:
                mixed = torch.nn.functional.pad(mixed, (kc - n_tok, 0))
            pairs = [(p + ".recurrent_state", taps[p + ".final_state"]), (p + ".conv_state", mixed[:, -kc:])]
        else:
            p = f"model.layers.{i}.self_attn"
            v = taps[p + ".v_proj.out"].reshape(taps[p + ".k_rope"].shape)
            pairs = [(p + ".key_cache", taps[p + ".k_rope"]), (p + ".value_cache", v)]
        for name, ref in pairs:
            e = rel_l2(cache[name], ref)
            if e >= worst:
                worst, worst_name = e, name
    return worst, worst_name


def chunked_vs_recurrent(calls: list[dict[str, Any]]) -> tuple[float, dict[str, float]]:
    """Re-runs transformers' recurrent delta rule on each captured chunked call's inputs."""
    worst = 0.0
    per: dict[str, float] = {}
    rec_fn = qn.torch_recurrent_gated_delta_rule
    for c in calls:
        out, state = rec_fn(c["query"], c["key"], c["value"], g=c["g"], beta=c["beta"],
                            initial_state=c["initial_state"], output_final_state=True, use_qk_l2norm_in_kernel=True)
        e = max(rel_l2(c["out"], out), rel_l2(c["state"], state))
        per[c["name"]] = e
        worst = max(worst, e)
    return worst, per


def fla_vs_torch(calls: list[dict[str, Any]]) -> float | None:
    """fla's kernels (what transformers dispatches to when fla is installed; CUDA only) against
    the torch chunked function's outputs on the same captured inputs. None when not runnable."""
    if not installed("fla") or not torch.cuda.is_available():
        return None
    fn = DISPATCHED["torch_chunk_gated_delta_rule"]
    worst = 0.0
    for c in calls:
        dev = {k: (v.cuda().float() if isinstance(v, torch.Tensor) else v) for k, v in c.items()}
        out, state = fn(dev["query"], dev["key"], dev["value"], g=dev["g"], beta=dev["beta"],
                        initial_state=dev["initial_state"], output_final_state=True, use_qk_l2norm_in_kernel=True)
        worst = max(worst, rel_l2(out.cpu(), c["out"]), rel_l2(state.cpu(), c["state"]))
    return worst


def from_pretrained_matches(ckpt_dir: str, model: torch.nn.Module) -> int:
    """1 if transformers' own loader (from_pretrained) reads the checkpoint folder into exactly
    the weights the golden ran with (hub key conversion, tied embeddings), else 0."""
    loaded = Qwen3NextForCausalLM.from_pretrained(ckpt_dir, dtype=torch.float32)
    a, b = loaded.state_dict(), model.state_dict()
    same = set(a) == set(b) and all(torch.equal(a[k], b[k].to(torch.float32)) for k in b)
    return int(same)


# ---- delta-rule case files ----------------------------------------------------------------

DELTA_CASES = (  # (T, chunk_size, initial_state?)
    (1, 64, False), (5, 64, True), (63, 64, True), (64, 64, False), (65, 64, True),
    (130, 64, False), (200, 64, True), (37, 16, True), (50, 32, False), (100, 16, True),
)


def delta_rule_cases(seed: int, nv: int = 4, dk: int = 16, dv: int = 24) -> list[dict[str, Any]]:
    """In-distribution inputs: q, k, v ~ N(0, 1) (the function L2-normalises q and k), g from the
    softplus path -exp(A_log)*softplus(a + dt_bias) clamped to [-20, -1e-4], beta = sigmoid(N(0, 1.5^2))."""
    cases = []
    for n, (t, chunk, with_state) in enumerate(DELTA_CASES):
        gen = torch.Generator().manual_seed(seed * 1000 + n)
        q = torch.randn(1, t, nv, dk, generator=gen)
        k = torch.randn(1, t, nv, dk, generator=gen)
        v = torch.randn(1, t, nv, dv, generator=gen)
        a_log = torch.empty(nv).uniform_(math.log(0.02), math.log(8.0), generator=gen)
        dt_bias = torch.empty(nv).uniform_(-4.0, 1.0, generator=gen)
        a = torch.randn(1, t, nv, generator=gen)
        g = (-a_log.exp() * torch.nn.functional.softplus(a + dt_bias)).clamp(-20.0, -1e-4)
        beta = torch.sigmoid(1.5 * torch.randn(1, t, nv, generator=gen))
        s0 = 0.3 * torch.randn(1, nv, dk, dv, generator=gen) if with_state else torch.zeros(1, nv, dk, dv)
        c_out, c_state = qn.torch_chunk_gated_delta_rule(q, k, v, g=g, beta=beta, chunk_size=chunk, initial_state=s0,
                                                         output_final_state=True, use_qk_l2norm_in_kernel=True)
        r_out, r_state = qn.torch_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, initial_state=s0,
                                                             output_final_state=True, use_qk_l2norm_in_kernel=True)
        cases.append(dict(T=t, chunk_size=chunk, q=q[0], k=k[0], v=v[0], g=g[0], beta=beta[0], initial_state=s0[0],
                          chunked_out=c_out[0], recurrent_out=r_out[0], chunked_state=c_state[0],
                          recurrent_state=r_state[0],
                          rel_out=rel_l2(c_out, r_out), rel_state=rel_l2(c_state, r_state)))
    return cases


# ---- HDF5 writing -------------------------------------------------------------------------

def put(group: h5py.Group, name: str, arr: np.ndarray) -> h5py.Dataset:
    kw: dict[str, Any] = {"track_times": False}  # no timestamps: regenerated files are byte-identical
    if arr.size >= 4096:
        kw = dict(compression="gzip", compression_opts=4, shuffle=True)
    return group.create_dataset(name, data=arr, **kw)


def root_attrs(f: h5py.File, attrs: dict[str, Any]) -> None:
    for k, v in attrs.items():
        if isinstance(v, bool):
            f.attrs[k] = np.int64(int(v))
        elif isinstance(v, int):
            f.attrs[k] = np.int64(v)
        elif isinstance(v, float):
            f.attrs[k] = np.float64(v)
        else:
            f.attrs[k] = str(v)


def rename_onto(tmp: str, path: str) -> None:
    os.replace(tmp, path)


# ---- main ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help="tiny | odd | long | heads | real-1l")
    src.add_argument("--config", help="config.json to build a random model from")
    src.add_argument("--checkpoint", help="existing checkpoint folder (config.json + *.safetensors)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--mode", default="full", choices=["full", "decode", "delta-rule"])
    p.add_argument("--tokens", help="comma-separated token ids")
    p.add_argument("--seq-len", type=int, help="number of random tokens (default: the preset's)")
    p.add_argument("--prefill", type=int, help="decode: tokens in the prefill (default T/2)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", required=True, help="golden .h5 to write")
    p.add_argument("--ckpt-name", help="checkpoint folder name next to --out (default: preset, '-bf16w' for bf16)")
    p.add_argument("--fused-experts", action="store_true", help="write mlp.experts.gate_up_proj/down_proj instead of per-expert keys")
    p.add_argument("--min-router-margin", type=float,
                   help="redraw random tokens until every float64 top-k router choice has this logit margin "
                        "(default 0.1 for bfloat16, else 0)")
    p.add_argument("--kernels", default="torch", choices=["torch", "auto"],
                   help="torch: transformers' torch functions even when fla/causal_conv1d are installed (default); "
                        "auto: whatever transformers dispatches to")
    p.add_argument("--allow-inconsistent", action="store_true", help="write the golden even when an audit is out of band (consistent=0)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hf_logging.disable_progress_bar()
    if args.kernels == "torch":
        with torch_path():
            return run_main(args)
    return run_main(args)


def run_main(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    base_attrs: dict[str, Any] = dict(format_version=FORMAT_VERSION, generator="golden/generate.py", seed=args.seed,
                                      device="cpu", fla_installed=installed("fla"),
                                      causal_conv1d_installed=installed("causal_conv1d"), mode=args.mode,
                                      kernels=kernel_path(args.kernels),
                                      **versions())
    if args.mode == "delta-rule":
        return write_delta_rule(args, base_attrs)

    # -- config and weights
    preset = args.preset or ("checkpoint" if args.checkpoint else "config")
    hub: dict[str, np.ndarray] | None = None
    if args.checkpoint:
        cfg, hub = read_checkpoint(args.checkpoint)
        seq_len = 16
    elif args.config:
        with open(args.config) as f:
            cfg = json.load(f)
        seq_len = 16
    else:
        cfg, seq_len = preset_config(args.preset or "tiny")
        preset = args.preset or "tiny"
    n_mtp = int(cfg.get("num_nextn_predict_layers", 0) or 0)
    if hub is not None and n_mtp == 0 and any(k.startswith("mtp.") for k in hub):
        n_mtp = 1  # released checkpoints carry mtp.* without a config field (vLLM then assumes 1)
    config = make_config(cfg)
    model, mtp = build(config, n_mtp)
    rounded = False
    if hub is None:
        shapes = hub_shapes(model)
        if mtp is not None:
            shapes.update(hub_shapes(mtp, "mtp."))
        hub = random_hub_weights(shapes, args.seed, config.tie_word_embeddings)
        if args.dtype == "bfloat16":  # bf16-exact weights: the float64 oracle sees the same values
            hub = {k: torch.from_numpy(v).to(torch.bfloat16).to(torch.float32).numpy() for k, v in hub.items()}
            rounded = True
        name = args.ckpt_name or (preset + ("-bf16w" if args.dtype == "bfloat16" else ""))
        ckpt_dir = os.path.join(out_dir, name)
        write_checkpoint(ckpt_dir, config_json(config, n_mtp), hub, args.fused_experts, config.num_experts)
    else:
        ckpt_dir = os.path.abspath(args.checkpoint)
    load_weights(model, mtp, hub)
    del hub  # the model holds the weights now (real-1l: ~3 GB of float32)
    n_params = sum(p.numel() for p in model.parameters())
    same_as_hf = from_pretrained_matches(ckpt_dir, model) if n_params <= 200_000_000 else -1
    with open(os.path.join(ckpt_dir, "config.json")) as f:
        config_text = f.read()

    # -- runs: float64 (oracle / noise reference), float32, and the golden's dtype
    master = {k: v.clone() for k, v in model.state_dict().items()}
    master_mtp = {k: v.clone() for k, v in mtp.state_dict().items()} if mtp is not None else None

    def in_dtype(dt: torch.dtype) -> None:
        model.load_state_dict(master)
        model.to(dt)
        if mtp is not None:
            mtp.load_state_dict(master_mtp)
            mtp.to(dt)

    # -- inputs. Random tokens are redrawn (seeded: draw n uses seed + 7 + n) until every router's
    # top-k choice in the float64 run clears --min-router-margin (default 0.1 for bf16 goldens,
    # where bf16 rounding of router logits would otherwise make near-ties ambiguous; 0 otherwise).
    margin_needed = args.min_router_margin if args.min_router_margin is not None else \
        (0.1 if args.dtype == "bfloat16" else 0.0)
    in_dtype(torch.float64)
    draws = 0
    best = -math.inf
    while True:
        if args.tokens:
            ids_list = [int(x) for x in args.tokens.split(",") if x.strip()]
        else:
            gen = torch.Generator().manual_seed(args.seed + 7 + draws)
            ids_list = torch.randint(0, config.vocab_size, (args.seq_len or seq_len,), generator=gen).tolist()
        draws += 1
        if not ids_list or any(i < 0 or i >= config.vocab_size for i in ids_list):
            raise SystemExit(f"generate.py: token ids must be in [0, {config.vocab_size}) (and at least one)")
        ids = torch.tensor([ids_list], dtype=torch.int64)
        r64 = full_forward(model, mtp, ids)
        margin = router_margin(r64.taps)
        best = max(best, margin)
        if margin >= margin_needed or args.tokens:
            break
        if draws >= 200:
            raise SystemExit(f"generate.py: no token draw in 200 gives router margins >= {margin_needed} "
                             f"(best {best:.3g}); lower --min-router-margin")
    n_tok = ids.shape[1]
    prefill = args.prefill if args.prefill is not None else max(1, n_tok // 2)
    if not 1 <= prefill <= n_tok:
        raise SystemExit(f"generate.py: --prefill {prefill} must be in [1, {n_tok}]")

    in_dtype(torch.float32)
    r32 = full_forward(model, mtp, ids)
    golden = {"float32": r32, "float64": r64}.get(args.dtype)
    audit_dtype = "float64" if args.dtype == "float64" else "float32"
    in_dtype(DTYPES[audit_dtype])
    record_steps = args.mode == "decode" and args.dtype != "bfloat16"
    audit_dec_logits, audit_caches, dec_steps = decode_run(model, ids, prefill, record=record_steps)
    dec_logits, dec_caches = audit_dec_logits, audit_caches
    if args.dtype == "bfloat16":
        in_dtype(torch.bfloat16)
        golden = full_forward(model, mtp, ids)
        if args.mode == "decode":
            dec_logits, dec_caches, dec_steps = decode_run(model, ids, prefill, record=True)
    assert golden is not None

    # -- audits (decode vs full in float32 for bf16 goldens: the audit checks transformers, not bf16)
    audit_run = r64 if audit_dtype == "float64" else r32
    f32_f64 = rel_l2(r32.logits, r64.logits)
    dec_full = rel_l2(audit_dec_logits, audit_run.logits)
    cache_full, cache_name = caches_vs_full(audit_caches[list(audit_caches)[-1]], audit_run.taps, config)
    band_dec = BAND_DECODE_VS_FULL[audit_dtype]
    steps_full, steps_name = decode_taps_vs_full(dec_steps, golden.taps, prefill, band_dec) if record_steps else (0.0, "")
    cvr, cvr_per = chunked_vs_recurrent(golden.delta_calls)
    fla = fla_vs_torch(golden.delta_calls) if args.kernels == "torch" else None
    state = dict(master)
    if master_mtp is not None:
        state.update({"mtp." + k: v for k, v in master_mtp.items()})
    ident, ident_name = tap_identities(audit_run, ids, config, state)
    routing_flips = 0
    for name, t in r32.taps.items():
        if name.endswith("topk_idx"):
            routing_flips += int((torch.sort(t, -1).values != torch.sort(r64.taps[name], -1).values).any(-1).sum())
    problems = []
    if not f32_f64 <= BAND_F32_VS_F64_LOGITS:
        problems.append(f"float32 vs float64 logits rel_l2 {f32_f64:.3e} > {BAND_F32_VS_F64_LOGITS:.0e}")
    if not dec_full <= band_dec:
        problems.append(f"prefill({prefill})+decode vs full forward logits rel_l2 {dec_full:.3e} > {band_dec:.0e}")
    if not cache_full <= band_dec:
        problems.append(f"cache after the last decode step vs full forward: {cache_name} rel_l2 {cache_full:.3e} > {band_dec:.0e}")
    if not steps_full <= band_dec:
        problems.append(f"decode-step taps vs full forward rows: first out of band {steps_name}, worst rel_l2 "
                        f"{steps_full:.3e} > {band_dec:.0e}")
    if not cvr <= BAND_CHUNKED_VS_RECURRENT:
        problems.append(f"chunked vs recurrent delta rule rel_l2 {cvr:.3e} > {BAND_CHUNKED_VS_RECURRENT:.0e} ({cvr_per})")
    if not ident <= BAND_TAP_IDENTITIES:
        problems.append(f"tap identities: {ident_name} differs from its numpy float64 recomputation by rel_l2 {ident:.3e}")
    if fla is not None and not fla <= BAND_FLA_VS_TORCH:
        problems.append(f"fla vs torch delta rule rel_l2 {fla:.3e} > {BAND_FLA_VS_TORCH:.0e}")
    if same_as_hf == 0:
        problems.append("transformers' from_pretrained does not load the checkpoint into the weights that ran")
    if routing_flips:
        problems.append(f"{routing_flips} tokens route to different experts in float32 and float64")
    consistent = not problems
    print(f"generate.py: {preset} {args.dtype} T={n_tok}: f32 vs f64 logits rel_l2 {f32_f64:.3e}; "
          f"prefill {prefill} + decode vs full ({audit_dtype}) {dec_full:.3e}, caches {cache_full:.3e}; chunked vs recurrent {cvr:.3e}; "
          f"routing flips f32/f64 {routing_flips}; tap identities {ident:.3e} ({ident_name})", file=sys.stderr)
    if problems:
        for p in problems:
            print(f"generate.py: AUDIT OUT OF BAND: {p}", file=sys.stderr)
        if not args.allow_inconsistent:
            print("generate.py: no golden written (use --allow-inconsistent to write one marked consistent=0)", file=sys.stderr)
            return 1

    # -- write
    attrs = dict(base_attrs)
    attrs.update(dtype=args.dtype, preset=preset, checkpoint=os.path.relpath(ckpt_dir, out_dir),
                 consistent=int(consistent), attn_implementation="eager", experts_implementation="eager",
                 audit_f32_vs_f64_logits_rel_l2=f32_f64, audit_decode_vs_full_rel_l2=dec_full,
                 audit_decode_dtype=audit_dtype,
                 audit_decode_prefill_tokens=prefill,
                 audit_decode_cache_vs_full_rel_l2=cache_full, audit_decode_cache_worst=cache_name,
                 audit_chunked_vs_recurrent_rel_l2=cvr, audit_routing_flips_f32_vs_f64=routing_flips,
                 audit_bands=json.dumps({"f32_vs_f64_logits": BAND_F32_VS_F64_LOGITS, "decode_vs_full": band_dec,
                                         "chunked_vs_recurrent": BAND_CHUNKED_VS_RECURRENT, "routing_flips": 0,
                                         "fla_vs_torch": BAND_FLA_VS_TORCH, "tap_identities": BAND_TAP_IDENTITIES}),
                 float64_note=F64_NOTE, audit_problems="; ".join(problems),
                 audit_from_pretrained_identical=same_as_hf,
                 router_margin_min_f64=float(margin) if math.isfinite(margin) else -1.0,
                 router_margin_required=float(margin_needed), token_draws=draws,
                 audit_tap_identities_rel_l2=ident, audit_tap_identities_worst=ident_name)
    if fla is not None:
        attrs["audit_fla_vs_torch_rel_l2"] = fla
    if record_steps:
        attrs["audit_decode_taps_vs_full_rel_l2"] = steps_full
        attrs["audit_decode_taps_where"] = steps_name
    if rounded:
        attrs["weights_rounded_to"] = "bfloat16"
    tmp = args.out + ".tmp"
    store = "float64" if args.dtype == "float64" else "float32"
    with h5py.File(tmp, "w", track_order=True) as f:
        root_attrs(f, attrs)
        f.create_dataset("config", data=config_text, dtype=h5py.string_dtype("utf-8"), track_times=False)
        inp = f.create_group("inputs", track_order=True)
        inp.create_dataset("input_ids", data=ids[0].numpy().astype(np.int64), track_times=False)
        put(f, "logits", stored(golden.logits, store))
        if golden.mtp_logits is not None:
            put(f, "mtp_logits", stored(golden.mtp_logits, store))
        tg = f.create_group("tensors", track_order=True)
        for name, t in golden.taps.items():
            ds = put(tg, name, stored(t, store))
            ref, low = r64.taps[name], r32.taps[name]
            if t.is_floating_point():
                ds.attrs["noise_rel_l2"] = np.float64(rel_l2(low, ref))
                ds.attrs["noise_max_abs"] = np.float64(max_abs(low, ref))
                if args.dtype == "bfloat16":
                    ds.attrs["lowp_rel_l2"] = np.float64(rel_l2(t, ref))
            else:
                ds.attrs["noise_mismatches"] = np.int64(int((low != ref).sum()))
            if name.endswith("topk_idx"):
                logits = golden.taps[name[: -len("topk_idx")] + "logits"].to(torch.float64)
                k = t.shape[-1]
                srt = torch.sort(logits, -1, descending=True).values
                if k < logits.shape[-1]:  # smallest router-logit gap between the k-th and (k+1)-th expert
                    ds.attrs["topk_logit_margin_min"] = np.float64((srt[:, k - 1] - srt[:, k]).min().item())
                if args.dtype == "bfloat16":
                    ds.attrs["lowp_mismatches"] = np.int64(int((torch.sort(t, -1).values != torch.sort(ref, -1).values).any(-1).sum()))
        if args.dtype == "bfloat16":
            og = f.create_group("oracle", track_order=True)
            put(og, "logits", stored(r64.logits, "float64"))
            f["logits"].attrs["lowp_rel_l2"] = np.float64(rel_l2(golden.logits, r64.logits))
            if r64.mtp_logits is not None:
                put(og, "mtp_logits", stored(r64.mtp_logits, "float64"))
            for name, t in r64.taps.items():
                put(og, name, stored(t, "float64"))
        if args.mode == "decode":
            dg = f.create_group("decode", track_order=True)
            dg.attrs["prefill_tokens"] = np.int64(prefill)
            put(dg, "logits", stored(dec_logits, store))
            cg = dg.create_group("cache", track_order=True)
            for step, snap in dec_caches.items():
                sg = cg.create_group(step, track_order=True)
                for name, t in snap.items():
                    put(sg, name, stored(t, store))
            tgd = dg.create_group("tensors", track_order=True)
            for step, step_taps in dec_steps.items():
                sg = tgd.create_group(step, track_order=True)
                for name, t in step_taps.items():
                    put(sg, name, stored(t, store))
    rename_onto(tmp, args.out)
    print(f"generate.py: wrote {args.out} ({len(golden.taps)} taps, checkpoint {attrs['checkpoint']}, "
          f"consistent={int(consistent)})", file=sys.stderr)
    return 0


def write_delta_rule(args: argparse.Namespace, base_attrs: dict[str, Any]) -> int:
    cases = delta_rule_cases(args.seed)
    worst = max(max(c["rel_out"], c["rel_state"]) for c in cases)
    consistent = worst <= BAND_CHUNKED_VS_RECURRENT
    print(f"generate.py: delta-rule {len(cases)} cases, worst chunked vs recurrent rel_l2 {worst:.3e}", file=sys.stderr)
    if not consistent and not args.allow_inconsistent:
        print("generate.py: AUDIT OUT OF BAND: chunked vs recurrent; no file written", file=sys.stderr)
        return 1
    attrs = dict(base_attrs)
    attrs.update(dtype="float32", preset="delta-rule", checkpoint="", consistent=int(consistent),
                 audit_chunked_vs_recurrent_rel_l2=worst, use_qk_l2norm_in_kernel=1)
    tmp = args.out + ".tmp"
    with h5py.File(tmp, "w", track_order=True) as f:
        root_attrs(f, attrs)
        dg = f.create_group("delta_rule", track_order=True)
        for n, c in enumerate(cases):
            g = dg.create_group(f"case_{n}", track_order=True)
            g.attrs["T"] = np.int64(c["T"])
            g.attrs["chunk_size"] = np.int64(c["chunk_size"])
            g.attrs["chunked_vs_recurrent_out_rel_l2"] = np.float64(c["rel_out"])
            g.attrs["chunked_vs_recurrent_state_rel_l2"] = np.float64(c["rel_state"])
            for key in ("q", "k", "v", "g", "beta", "initial_state", "chunked_out", "recurrent_out",
                        "chunked_state", "recurrent_state"):
                put(g, key, c[key].to(torch.float32).numpy())
    rename_onto(tmp, args.out)
    print(f"generate.py: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
