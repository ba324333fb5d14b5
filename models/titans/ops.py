"""The neural long-term memory's write/read recurrence (Titans, arXiv 2501.00663, eqs. 12-15 and section 3.2),
as a chunk-parallel op and a token-by-token reference.

Per head the memory is an MLP with weight matrices W^1..W^L (L = 1: a matrix memory), x -> silu(x W^1) ... W^L.
Each weight matrix has a state A (W = phi(A), see objectives.py) and a momentum S. For token t:
    u_t = d loss(M_{W_g}(k_t) - v_t) / dW                gradient at the chunk-start weights W_g (section 3.2)
    S_t = eta_t S_{t-1} - theta_t u_t                     surprise with momentum (eq. 13, eta = 0: no momentum)
    A_t = keep_t A_{t-1} + S_t, keep_t = 1 - alpha_t      forgetting (eq. 13 / MIRAS retention)
    y_t = M_{phi(A_t)}(q_t)                               read after the write, no weight change (eq. 15)
Chunks are aligned to absolute stream positions (pos % chunk_size == 0 starts one), so a stream cut anywhere
gives the same result as one call: the state carries A, S and the current chunk's start state G.

Parallel form, per chunk of n tokens (no loop over tokens): all u_i come from one batched forward + closed-form
backward of the MLP at W_g, as outer products a_i^T delta_i that are never materialised. Unrolling the two linear
recurrences inside the chunk,
    A_t = beta_t A_0 + m_t S_0 - sum_{i<=t} C[t, i] a_i^T delta_i
with beta_t = prod_{j<=t} keep_j, D[t, s] = beta_t / beta_s (s <= t), Mo[s, i] = theta_i prod_{i<j<=s} eta_j,
C = D @ Mo and m = D @ (prod_{j<=s} eta_j). All decay products are taken as exp of differences of cumulative
log-sums, so nothing under- or overflows. Reads then need no per-token weights (the "dual form"):
    r A_t = beta_t (r A_0) + m_t (r S_0) - ((C * (r a^T)) @ delta)_t
layer by layer, with the read activations r of the previous layer. When phi is not the identity (MIRAS l_q and KL
retention) the chunk's per-token states A_t [n, d_in, d_out] are materialised instead and phi applied to each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_grad(z):
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def mlp_apply(x, weights):
    """x [..., n, d0] through silu(x W1) ... W_L with per-head weights [..., d_{l-1}, d_l]."""
    for l, W in enumerate(weights):
        x = x @ W
        if l < len(weights) - 1:
            x = F.silu(x)
    return x


def _mlp_with_grads(k, v, weights, bias, bias_param):
    """Forward at the chunk-start weights and closed-form backward of the attentional bias: returns the layer
    inputs a_l and the output-gradients delta_l, so that dloss_i/dW_l = a_l[i]^T delta_l[i]."""
    acts, pres, h = [], [], k
    for l, W in enumerate(weights):
        acts.append(h)
        z = h @ W
        pres.append(z)
        h = F.silu(z) if l < len(weights) - 1 else z
    delta = bias.grad(h - v, bias_param)
    deltas = [delta]
    for l in range(len(weights) - 1, 0, -1):
        delta = (delta @ weights[l].transpose(-1, -2)) * silu_grad(pres[l - 1])
        deltas.insert(0, delta)
    return acts, deltas


def _decay_matrix(logs, tri):
    """exp(cum[t] - cum[s]) for s <= t else 0: products of exp(logs) over (s, t]. logs [..., n] -> [..., n, n]."""
    cum = logs.cumsum(-1)
    diff = cum.unsqueeze(-1) - cum.unsqueeze(-2)
    return torch.where(tri, diff, torch.full_like(diff, float("-inf"))).exp(), cum


def _chunk_parallel(q, k, v, theta, log_keep, log_eta, bias_param, A, S, G, bias, retention):
    """One chunk (or the part of one that falls in this call). q, k [B,H,n,d0], v [B,H,n,dL], theta, log_keep,
    log_eta [B,H,n]; A, S: states before the first token; G: the chunk-start states (gradient point)."""
    n = q.shape[2]
    tri = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    weights_g = [retention.phi(g) for g in G]
    acts, deltas = _mlp_with_grads(k, v, weights_g, bias, bias_param)

    if log_keep is None:
        log_keep = torch.zeros_like(theta)
    D, cum_keep = _decay_matrix(log_keep, tri)
    beta = cum_keep.exp()  # [B,H,n]
    if log_eta is not None:
        Mo, cum_eta = _decay_matrix(log_eta, tri)
        Mo = Mo * theta.unsqueeze(-2)
        C = D @ Mo
        E = cum_eta.exp()
        m = (D @ E.unsqueeze(-1)).squeeze(-1)
    else:
        C = D * theta.unsqueeze(-2)

    r, new_A, new_S = q, [], []
    last = len(A) - 1
    for l in range(len(A)):
        a, d = acts[l], deltas[l]
        c_end = C[..., -1, :].unsqueeze(-1)  # weights of each token's gradient in the chunk-end state
        A_end = beta[..., -1, None, None] * A[l] - a.transpose(-1, -2) @ (c_end * d)
        if log_eta is not None:
            A_end = A_end + m[..., -1, None, None] * S[l]
            mo_end = Mo[..., -1, :].unsqueeze(-1)
            new_S.append(E[..., -1, None, None] * S[l] - a.transpose(-1, -2) @ (mo_end * d))
        new_A.append(A_end)
        if retention.linear:  # dual form: no per-token weights
            z = beta.unsqueeze(-1) * (r @ A[l]) - (C * (r @ a.transpose(-1, -2))) @ d
            if log_eta is not None:
                z = z + m.unsqueeze(-1) * (r @ S[l])
        else:  # materialise the chunk's per-token states, apply phi to each
            A_t = beta[..., None, None] * A[l].unsqueeze(2) - torch.einsum("bhti,bhia,bhic->bhtac", C, a, d)
            if log_eta is not None:
                A_t = A_t + m[..., None, None] * S[l].unsqueeze(2)
            z = torch.einsum("bhta,bhtac->bhtc", r, retention.phi(A_t))
        r = F.silu(z) if l < last else z
    return r, new_A, (new_S if log_eta is not None else None)


def _walk(T, chunk_size, pos):
    """(start, length) of the pieces of a call of T tokens at stream position pos, cut at chunk boundaries."""
    t = 0
    while t < T:
        n = min(chunk_size - (pos + t) % chunk_size, T - t)
        yield t, n
        t += n


def memory_parallel(q, k, v, theta, log_keep, log_eta, state, chunk_size, bias, retention, bias_param=None):
    """Write every token into the memory and read each one back after its write, chunk-parallel.

    q, k [B,H,T,d_in]; v [B,H,T,d_out]; theta [B,H,T] (inner learning rate); log_keep = log(1 - alpha) [B,H,T] or
    None (no forgetting); log_eta = log(momentum) [B,H,T] or None (no momentum); bias_param [B,H,T,1] or None.
    state = {"A": [per-layer [B,H,d_{l-1},d_l]], "S": [...] or None, "G": [...], "pos": int}.
    Returns y [B,H,T,d_out] and the new state."""
    A, S, G, pos = list(state["A"]), state["S"], list(state["G"]), state["pos"]
    outs = []
    for t, n in _walk(q.shape[2], chunk_size, pos):
        if (pos + t) % chunk_size == 0:
            G = A
        sl = slice(t, t + n)
        y, A, S = _chunk_parallel(
            q[:, :, sl], k[:, :, sl], v[:, :, sl], theta[..., sl],
            None if log_keep is None else log_keep[..., sl], None if log_eta is None else log_eta[..., sl],
            None if bias_param is None else bias_param[:, :, sl], A, S, G, bias, retention)
        outs.append(y)
    return torch.cat(outs, dim=2), {"A": A, "S": S, "G": G, "pos": pos + q.shape[2]}


def memory_naive(q, k, v, theta, log_keep, log_eta, state, chunk_size, bias, retention, bias_param=None):
    """Reference: the recurrence walked one token at a time, with the per-token gradient taken by torch.func.grad
    of the bias's loss (not the closed form) at the chunk-start weights."""
    A, S, G, pos = list(state["A"]), state["S"], list(state["G"]), state["pos"]
    outs = []
    for t in range(q.shape[2]):
        if (pos + t) % chunk_size == 0:
            G = A
        kt, vt = k[:, :, t:t + 1], v[:, :, t:t + 1]
        bp = None if bias_param is None else bias_param[:, :, t:t + 1]

        def inner_loss(weights):
            return bias.loss(mlp_apply(kt, weights) - vt, bp).sum()

        grads = torch.func.grad(inner_loss)([retention.phi(g) for g in G])
        th = theta[:, :, t, None, None]
        keep = 1.0 if log_keep is None else log_keep[:, :, t, None, None].exp()
        if log_eta is not None:
            S = [log_eta[:, :, t, None, None].exp() * s - th * u for s, u in zip(S, grads)]
            A = [keep * a + s for a, s in zip(A, S)]
        else:
            A = [keep * a - th * u for a, u in zip(A, grads)]
        outs.append(mlp_apply(q[:, :, t:t + 1], [retention.phi(a) for a in A]))
    return torch.cat(outs, dim=2), {"A": A, "S": S, "G": G, "pos": pos + q.shape[2]}
