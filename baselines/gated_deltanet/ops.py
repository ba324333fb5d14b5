"""The gated delta rule (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with Delta Rule",
arXiv:2412.06464, Section 3.1, Eq. 10), in the state layout of flash-linear-attention (fla): S_t is [K, V] per head
and

    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,        o_t = S_t^T (scale * q_t)

(the paper writes the transpose, S_t = S_{t-1} alpha_t (I - beta_t k_t k_t^T) + beta_t v_t k_t^T, o_t = S_t q_t).
alpha_t = exp(g_t) is passed in log space as g_t <= 0, beta_t in (0, 1).

- `naive_recurrent_gated_delta_rule`: the token-by-token recurrence above, literally (the reference).
- `chunk_gated_delta_rule_torch`: the chunkwise-parallel form (Section 3.3: DeltaNet's WY/UT-transform chunk
  algorithm, Eqs. 3-9, extended with the decay products gamma): inside a chunk of C tokens the per-token
  corrections u solve one unit-lower-triangular system, so the only sequential work is one state update per chunk. Pure PyTorch, runs on the CPU. The
  formulation follows fla's `chunk_gated_delta_rule` and transformers' Qwen3-Next `torch_chunk_gated_delta_rule`.
- `chunk_gated_delta_rule`: fla's Triton kernel when fla is importable and the tensors are on CUDA; otherwise, in
  float32 / bf16, transformers' `torch_chunk_gated_delta_rule` (Qwen3-Next), the same algorithm in PyTorch, which
  gave bitwise the same outputs as `chunk_gated_delta_rule_torch` at the presets' shapes and no measurable speed
  difference (scripts/bench_gated_delta.py: 0.89-1.07x), so the library's copy is the one used; in float64 (the
  tests) or where transformers lacks it, `chunk_gated_delta_rule_torch`. All take and return the same tensors, so
  the caller never needs to know which one ran.

All functions take q, k [B, T, H, K], v [B, T, H, V], g, beta [B, T, H], initial_state [B, H, K, V] or None and
return (o [B, T, H, V], final_state [B, H, K, V] or None). They compute in float32 (float64 if given float64).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

try:  # optional CUDA kernels; never required
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as _fla_chunk_gated_delta_rule
except Exception:  # noqa: BLE001 - fla missing, or present without a working triton
    _fla_chunk_gated_delta_rule = None


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def naive_recurrent_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False):
    """Token by token: S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T (scale q_t)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    dtype = _compute_dtype(q)
    scale = K ** -0.5 if scale is None else scale
    q, k, v, g, beta = (x.to(dtype) for x in (q, k, v, g, beta))
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype)
    identity = torch.eye(K, dtype=dtype, device=q.device)
    outputs = []
    for t in range(T):
        k_t, v_t, q_t = k[:, t], v[:, t], q[:, t] * scale  # [B, H, K|V]
        alpha_t, beta_t = g[:, t].exp()[..., None, None], beta[:, t][..., None, None]  # [B, H, 1, 1]
        erase = identity - beta_t * k_t[..., :, None] * k_t[..., None, :]  # I - beta k k^T  [B, H, K, K]
        S = alpha_t * (erase @ S) + beta_t * k_t[..., :, None] * v_t[..., None, :]
        outputs.append((S.transpose(-1, -2) @ q_t[..., None])[..., 0])  # S^T q  [B, H, V]
    o = torch.stack(outputs, dim=1) if outputs else v.new_zeros(B, 0, H, V)
    return o, (S if output_final_state else None)


def chunk_gated_delta_rule_torch(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                                 chunk_size=64):
    """The chunkwise form. Per chunk with start state S0, decays gamma_r = prod_{i<=r} alpha_i and
    A_ri = beta_r (gamma_r / gamma_i) k_r . k_i for i < r, the corrections u_r = beta_r (v_r - alpha_r S_{r-1}^T k_r)
    solve (I + A) u = beta v - (beta gamma k) S0; then
        o_r   = gamma_r S0^T q_r + sum_{i<=r} (gamma_r / gamma_i) (q_r . k_i) u_i
        S_end = gamma_C S0 + sum_i (gamma_C / gamma_i) k_i u_i^T."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    dtype = _compute_dtype(q)
    scale = K ** -0.5 if scale is None else scale
    C = chunk_size
    # -> [B, H, T, .] in the compute dtype, padded to a multiple of C. Padded steps have k = 0, beta = 0 and
    # g = 0 (alpha = 1), so they leave the state unchanged and the final state stays exact.
    q, k, v = (x.transpose(1, 2).to(dtype) for x in (q, k, v))
    g, beta = (x.transpose(1, 2).to(dtype) for x in (g, beta))
    q = q * scale
    pad = (-T) % C
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (F.pad(x, (0, pad)) for x in (g, beta))
    n_chunks = (T + pad) // C
    q, k, v = (x.reshape(B, H, n_chunks, C, x.shape[-1]) for x in (q, k, v))
    g, beta = (x.reshape(B, H, n_chunks, C) for x in (g, beta))

    log_gamma = g.cumsum(-1)  # log prod_{i<=r} alpha_i within each chunk  [B, H, N, C]
    # decay[r, i] = gamma_r / gamma_i for i <= r, 0 above the diagonal (masked before exp, so no overflow)
    future = torch.ones(C, C, dtype=torch.bool, device=q.device).triu(1)
    decay = (log_gamma[..., :, None] - log_gamma[..., None, :]).masked_fill(future, float("-inf")).exp()
    k_beta, v_beta = k * beta[..., None], v * beta[..., None]
    A = ((k_beta @ k.transpose(-1, -2)) * decay).tril(-1)  # A_ri for i < r
    system = A + torch.eye(C, dtype=dtype, device=q.device)  # unit lower triangular
    u_from_v = torch.linalg.solve_triangular(system, v_beta, upper=False, unitriangular=True)
    u_from_state = torch.linalg.solve_triangular(system, k_beta * log_gamma.exp()[..., None], upper=False,
                                                 unitriangular=True)  # u = u_from_v - u_from_state @ S0
    attn = (q @ k.transpose(-1, -2)) * decay  # (q_r . k_i) gamma_r / gamma_i, i <= r
    q_decayed = q * log_gamma.exp()[..., None]  # gamma_r q_r
    k_to_end = k * (log_gamma[..., -1:] - log_gamma).exp()[..., None]  # (gamma_C / gamma_i) k_i
    gamma_end = log_gamma[..., -1].exp()[..., None, None]  # [B, H, N, 1, 1]

    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype)
    outputs = []
    for c in range(n_chunks):  # the only sequential part: one state hand-over per chunk
        u = u_from_v[:, :, c] - u_from_state[:, :, c] @ S
        outputs.append(q_decayed[:, :, c] @ S + attn[:, :, c] @ u)
        S = gamma_end[:, :, c] * S + k_to_end[:, :, c].transpose(-1, -2) @ u
    o = torch.cat(outputs, dim=2)[:, :, :T].transpose(1, 2)  # [B, T, H, V]
    return o, (S if output_final_state else None)


_LIBRARY = []  # transformers' torch_chunk_gated_delta_rule once looked up (None: this transformers lacks it)


def library_chunk_gated_delta_rule():
    """transformers' PyTorch chunked gated delta rule, or None. Its dispatcher would warn that the PyTorch path is
    "much slower" than fla on every CPU run; on the CPU that path is the intended one, so that warning is muted."""
    if not _LIBRARY:
        try:
            from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule
            logging.getLogger("transformers.integrations.hub_kernels").setLevel(logging.ERROR)
        except ImportError:
            torch_chunk_gated_delta_rule = None
        _LIBRARY.append(torch_chunk_gated_delta_rule)
    return _LIBRARY[0]


def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                           chunk_size=64):
    """fla's kernel on CUDA when installed; else transformers' PyTorch version (float32 / bf16) or
    `chunk_gated_delta_rule_torch` (float64, or no library copy). Output in q's dtype, final state in float32 (or
    float64). Some older fla releases refuse float32 inputs: run the CUDA model under bf16 autocast (or uninstall
    fla) in that case."""
    if _fla_chunk_gated_delta_rule is not None and q.is_cuda:
        o, state = _fla_chunk_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                                               output_final_state=output_final_state)
        return o, state
    library = library_chunk_gated_delta_rule() if q.dtype != torch.float64 else None
    # Under mixed precision the recurrence still runs in float32: autocast would otherwise run its matmuls in
    # bf16/fp16, and rounding errors compound through the chunk-to-chunk state hand-over.
    with torch.autocast(device_type=q.device.type, enabled=False):
        if library is not None:
            head_dim = q.shape[-1]
            if scale is not None and scale != head_dim ** -0.5:  # the library always scales q by 1/sqrt(K)
                q = q * (scale * head_dim ** 0.5)
            o, state = library(q, k, v, g, beta, chunk_size=chunk_size,
                               initial_state=None if initial_state is None else initial_state.float(),
                               output_final_state=output_final_state)
        else:
            o, state = chunk_gated_delta_rule_torch(q, k, v, g, beta, scale, initial_state, output_final_state,
                                                    chunk_size)
    return o.to(q.dtype), state
