"""Captures every tap of docs/golden-format.md from a running transformers Qwen3-Next model.

Two mechanisms, neither edits transformers:
  - forward hooks / pre-hooks on modules (outputs and inputs of named modules);
  - wrappers around functions of the modeling module, swapped into its namespace for the
    duration of a `with Capture(...)` block (torch_chunk_gated_delta_rule, causal_conv1d_fn,
    apply_rotary_pos_emb, eager_attention_forward) and an instance-level wrapper around each
    Gated DeltaNet's fix_query_key_value_ordering. The wrappers call the originals with the
    same arguments and return their results unchanged; the one change is that the chunked
    delta rule is always asked for its final state (output_final_state=True, which only adds
    an output) and the state is dropped again when the caller did not ask for it.

Taps are stored per token ([T, ...], batch dimension removed) as torch tensors in the run's
compute dtype, keyed by name, in execution order.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
import transformers.models.qwen3_next.modeling_qwen3_next as qn

PATCHED_FUNCTIONS = (
    "torch_chunk_gated_delta_rule",
    "torch_recurrent_gated_delta_rule",
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "apply_rotary_pos_emb",
    "eager_attention_forward",
)

# Module-name suffixes whose output is recorded as "<module>.out".
OUT_SUFFIXES = (
    "embed_tokens",
    "input_layernorm",
    "post_attention_layernorm",
    "linear_attn.in_proj_qkvz",
    "linear_attn.in_proj_ba",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.q_norm",
    "self_attn.k_norm",
    "mlp.experts",
    "mlp.shared_expert",
    "mlp.shared_expert_gate",
    "pre_fc_norm_embedding",
    "pre_fc_norm_hidden",
    "fc",
)


# Functions transformers may dispatch to an installed kernel package (fla, causal_conv1d).
KERNEL_FUNCTIONS = (
    "torch_chunk_gated_delta_rule",
    "torch_recurrent_gated_delta_rule",
    "causal_conv1d_fn",
    "causal_conv1d_update",
)
# What transformers dispatches to in this environment (fla's kernels when fla is installed).
DISPATCHED: dict[str, Callable[..., Any]] = {n: getattr(qn, n) for n in KERNEL_FUNCTIONS}


@contextlib.contextmanager
def torch_path() -> Iterator[None]:
    """Within the block, the modeling module calls transformers' own torch functions (the
    innermost function under its kernel-dispatch decorators) even when fla or causal_conv1d
    is installed: goldens come from the torch reference path on every machine."""
    saved = {n: getattr(qn, n) for n in KERNEL_FUNCTIONS}
    try:
        for n, fn in saved.items():
            setattr(qn, n, inspect.unwrap(fn))
        yield
    finally:
        for n, fn in saved.items():
            setattr(qn, n, fn)


def per_token(t: torch.Tensor) -> torch.Tensor:
    """Drops the batch dimension (batch is always 1 here) from [1, T, ...] tensors."""
    if t.dim() >= 3 and t.shape[0] == 1:
        return t[0]
    return t


class Recorder:
    """Holds the taps of one run; `on` switches recording (off during decode steps)."""

    def __init__(self) -> None:
        self.taps: dict[str, torch.Tensor] = {}
        self.on = True
        self.scope: str | None = None  # module path of the token mixer now running
        self.delta_calls: list[dict[str, Any]] = []  # chunked delta-rule calls, for the audit

    def put(self, name: str, t: torch.Tensor) -> None:
        if not self.on:
            return
        if name in self.taps:
            raise RuntimeError(f"capture: tap {name} recorded twice")
        self.taps[name] = t.detach().clone()


def _is_module_out(name: str) -> bool:
    return any(name == s or name.endswith("." + s) for s in OUT_SUFFIXES)


class Capture:
    """Context manager: installs hooks on `modules` (list of (prefix, module)) and patches
    the modeling module's functions; removes both on exit."""

    def __init__(self, rec: Recorder, modules: list[tuple[str, torch.nn.Module]]) -> None:
        self.rec = rec
        self.modules = modules
        self.handles: list[Any] = []
        self.saved: dict[str, Callable[..., Any]] = {}
        self.instance_patched: list[torch.nn.Module] = []

    # ---- function wrappers -------------------------------------------------------------
    def _wrap_functions(self) -> None:
        rec = self.rec
        orig = {n: getattr(qn, n) for n in PATCHED_FUNCTIONS}
        self.saved = orig

        def delta_taps(p: str, query, key, g, beta, out, state) -> None:
            n_rep = query.shape[2] // rec_heads(p)
            q_k = query[:, :, ::n_rep].to(torch.float32)
            k_k = key[:, :, ::n_rep].to(torch.float32)
            rec.put(f"{p}.q_l2", per_token(qn.l2norm(q_k, dim=-1, eps=1e-6)))
            rec.put(f"{p}.k_l2", per_token(qn.l2norm(k_k, dim=-1, eps=1e-6)))
            rec.put(f"{p}.g", per_token(g))
            rec.put(f"{p}.beta", per_token(beta))
            rec.put(f"{p}.core_out", per_token(out))
            rec.put(f"{p}.final_state", per_token(state))

        def chunk(query, key, value, g, beta, chunk_size=64, initial_state=None, output_final_state=False,
                  use_qk_l2norm_in_kernel=False, **kw):
            out, state = orig["torch_chunk_gated_delta_rule"](
                query, key, value, g=g, beta=beta, chunk_size=chunk_size, initial_state=initial_state,
                output_final_state=True, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, **kw)
            if rec.on and rec.scope is not None:
                p = rec.scope
                delta_taps(p, query, key, g, beta, out, state)
                rec.delta_calls.append(dict(name=p, query=query.detach().clone(), key=key.detach().clone(),
                                            value=value.detach().clone(), g=g.detach().clone(),
                                            beta=beta.detach().clone(), chunk_size=chunk_size,
                                            initial_state=None if initial_state is None else initial_state.detach().clone(),
                                            out=out.detach().clone(), state=state.detach().clone()))
            return out, (state if output_final_state else None)

        def recurrent(query, key, value, g, beta, initial_state=None, output_final_state=False,
                      use_qk_l2norm_in_kernel=False, **kw):
            out, state = orig["torch_recurrent_gated_delta_rule"](
                query, key, value, g=g, beta=beta, initial_state=initial_state,
                output_final_state=True, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, **kw)
            if rec.on and rec.scope is not None:
                delta_taps(rec.scope, query, key, g, beta, out, state)
            return out, (state if output_final_state else None)

        def conv_update(hidden_states, conv_state, weight, bias=None, activation=None):
            out = orig["causal_conv1d_update"](hidden_states, conv_state, weight, bias, activation)
            if rec.on and rec.scope is not None:
                rec.put(f"{rec.scope}.conv1d.out", out[0].transpose(0, 1))
            return out

        heads: dict[str, int] = {}
        for prefix, module in self.modules:
            for name, sub in module.named_modules():
                if isinstance(sub, qn.Qwen3NextGatedDeltaNet):
                    heads[prefix + name] = sub.num_k_heads

        def rec_heads(p: str) -> int:
            return heads[p]

        def conv(hidden_states, weight, bias=None, activation=None, **kw):
            out = orig["causal_conv1d_fn"](hidden_states, weight, bias, activation=activation, **kw)
            if rec.on and rec.scope is not None:
                rec.put(f"{rec.scope}.conv1d.out", out[0].transpose(0, 1))
            return out

        def rope(q, k, cos, sin, unsqueeze_dim=1):
            q_e, k_e = orig["apply_rotary_pos_emb"](q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
            if rec.on and rec.scope is not None:
                rec.put(f"{rec.scope}.q_rope", per_token(q_e.transpose(1, 2)))
                rec.put(f"{rec.scope}.k_rope", per_token(k_e.transpose(1, 2)))
            return q_e, k_e

        def eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
            out, weights = orig["eager_attention_forward"](module, query, key, value, attention_mask, scaling,
                                                           dropout=dropout, **kw)
            if rec.on and rec.scope is not None:
                rec.put(f"{rec.scope}.attn_out", per_token(out))
            return out, weights

        qn.torch_chunk_gated_delta_rule = chunk
        qn.torch_recurrent_gated_delta_rule = recurrent
        qn.causal_conv1d_update = conv_update
        qn.causal_conv1d_fn = conv
        qn.apply_rotary_pos_emb = rope
        qn.eager_attention_forward = eager

    # ---- hooks -------------------------------------------------------------------------
    def _hook_module(self, name: str, mod: torch.nn.Module) -> None:
        rec = self.rec
        h = self.handles

        if isinstance(mod, qn.Qwen3NextDecoderLayer):
            def layer_in(m, args, kwargs, name=name):
                x = args[0] if args else kwargs["hidden_states"]
                rec.put(f"{name}.in", per_token(x))
            h.append(mod.register_forward_pre_hook(layer_in, with_kwargs=True))
            h.append(mod.register_forward_hook(lambda m, a, o, name=name: rec.put(f"{name}.out", per_token(o))))
            return

        if isinstance(mod, (qn.Qwen3NextGatedDeltaNet, qn.Qwen3NextAttention)):
            def enter(m, args, kwargs, name=name):
                rec.scope = name
            def leave(m, args, kwargs, out, name=name):
                o = out[0] if isinstance(out, tuple) else out
                rec.put(f"{name}.out", per_token(o))
                rec.scope = None
            h.append(mod.register_forward_pre_hook(enter, with_kwargs=True))
            h.append(mod.register_forward_hook(leave, with_kwargs=True))
            if isinstance(mod, qn.Qwen3NextGatedDeltaNet):
                fix = mod.fix_query_key_value_ordering

                def fix_wrapped(mixed_qkvz, mixed_ba, fix=fix, name=name):
                    q, k, v, z, b, a = fix(mixed_qkvz, mixed_ba)
                    for point, t in (("q", q), ("k", k), ("v", v), ("z", z), ("b", b), ("a", a)):
                        rec.put(f"{name}.{point}", per_token(t))
                    return q, k, v, z, b, a
                mod.fix_query_key_value_ordering = fix_wrapped
                self.instance_patched.append(mod)
            return

        if isinstance(mod, qn.Qwen3NextRMSNormGated):
            n_v_heads = self._nv[name]

            def gated_out(m, args, out, name=name, n_v_heads=n_v_heads):
                # the caller flattens to [T*NV, DV] before the norm
                rec.put(f"{name}.out", out.reshape(-1, n_v_heads, out.shape[-1]))
            h.append(mod.register_forward_hook(gated_out))
            return

        if isinstance(mod, qn.Qwen3NextTopKRouter):
            def router(m, args, out, name=name):
                logits, weights, idx = out
                rec.put(f"{name}.logits", logits)
                rec.put(f"{name}.probs", F.softmax(logits, dtype=torch.float, dim=-1))
                rec.put(f"{name}.topk_idx", idx)
                rec.put(f"{name}.topk_weight", weights)
            h.append(mod.register_forward_hook(router))
            return

        if name.endswith("post_attention_layernorm"):
            h.append(mod.register_forward_pre_hook(lambda m, a, name=name: rec.put(f"{name}.in", per_token(a[0]))))

        if name.endswith("self_attn.q_proj"):
            def q_proj(m, args, out, name=name):
                o = per_token(out)
                rec.put(f"{name}.out", o)
                hd = self._head_dim[name]
                g = o.reshape(o.shape[0], -1, 2 * hd)[..., hd:]
                rec.put(name[: -len("q_proj")] + "gate", g)
            h.append(mod.register_forward_hook(q_proj))
            return

        if name.endswith("self_attn.o_proj"):
            h.append(mod.register_forward_pre_hook(
                lambda m, a, name=name: rec.put(name[: -len("o_proj")] + "gated_out", per_token(a[0]))))
            return

        if name.endswith(".mlp") or name == "mlp":
            h.append(mod.register_forward_hook(lambda m, a, o, name=name: rec.put(f"{name}.out", per_token(o))))
            return

        if name == "model.norm" or name == "norm" or name.endswith("mtp.norm"):
            h.append(mod.register_forward_hook(lambda m, a, o, name=name: rec.put(f"{name}.out", per_token(o))))
            return

        if _is_module_out(name):
            h.append(mod.register_forward_hook(lambda m, a, o, name=name: rec.put(f"{name}.out", per_token(o))))

    def __enter__(self) -> "Capture":
        self._nv: dict[str, int] = {}
        self._head_dim: dict[str, int] = {}
        for prefix, module in self.modules:
            for name, sub in module.named_modules():
                full = prefix + name
                if isinstance(sub, qn.Qwen3NextGatedDeltaNet):
                    self._nv[full + ".norm"] = sub.num_v_heads
                if isinstance(sub, qn.Qwen3NextAttention):
                    self._head_dim[full + ".q_proj"] = sub.head_dim
        self._wrap_functions()
        for prefix, module in self.modules:
            for name, sub in module.named_modules():
                if name == "":
                    continue
                self._hook_module(prefix + name, sub)
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        for mod in self.instance_patched:
            del mod.fix_query_key_value_ordering
        for n, fn in self.saved.items():
            setattr(qn, n, fn)
        self.rec.scope = None
