"""The neural long-term memory's write/read recurrence (Titans, arXiv 2501.00663, eqs. 12-15 and section 3.2),
as a chunk-parallel op and a token-by-token reference.

Per head the memory is a network with weight matrices W^1..W^L (L = 1: a matrix memory), Titans' MLP
x -> silu(x W^1) ... W^L or MIRAS' residual x -> x + LN(gelu(x W^1) ... W^L) (memory_net.py).
Each weight matrix has a state A (W = phi(A), see objectives.py) and a momentum S. For token t:
    u_t = d loss(M_{W_g}(k_t) - v_t) / dW                gradient at the chunk-start weights W_g (section 3.2),
                                                          optionally scaled to norm <= grad_clip per layer
    S_t = eta_t S_{t-1} - theta_t u_t                     surprise with momentum (eq. 13; eta = 0: none)
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
retention, per token) the chunk's per-token states A_t [n, d_in, d_out] are materialised instead and phi applied
to each; MIRAS' parallel form of Moneta (l_q normalised at chunk boundaries, objectives.LqRetention) keeps the
dual form and scales each layer's read by the chunk-start norm.

`_chunk_parallel` is one chunk of this under autograd. A run of whole chunks with the l2 bias and linear retention
(the Titans presets) goes through `fused_run.py` instead: the same math as one autograd node whose backward is
written by hand, tested against autograd through `_chunk_parallel`.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint

from harness.errors import HarnessError
from models.titans.fused_run import fused_chunk_run
from models.titans.memory_net import MLPNet, clip_token_grads, mlp_apply, mlp_with_grads
from models.titans.objectives import DecayRetention, L2Bias


def _decay_matrix(logs, lower):
    """exp(cum[t] - cum[s]) for s <= t else 0: products of exp(logs) over (s, t]; [..., n] -> [..., n, n].
    lower: [n, n], 1 on and below the diagonal, 0 above. Entries above are zeroed before exp (cum[t] - cum[s] >= 0
    there and could overflow) and after it; exp of 0 is several times faster on the CPU than exp of -inf."""
    cum = logs.cumsum(-1)
    return ((cum.unsqueeze(-1) - cum.unsqueeze(-2)) * lower).exp_() * lower, cum


def _coefficients(theta, log_keep, log_eta, q, k, factors=True):
    # theta arrives negated (-theta): C, c_end and mo_end then carry the update's minus sign, so every update
    # and read below is a plain (b)addbmm (alpha=-1 would cost an extra multiply per input in backward).
    """Mixing weights of chunks (any leading dims, time last, n tokens), shaped to broadcast against [.., n,
    d]:
    C [.., n, n] (token i's gradient in the state after token t), beta [.., n, 1] (A_0 in that state),
    c_end [.., n, 1] (token i's gradient in the chunk-end state), beta_end [.., 1, 1]; with momentum also
    m [.., n, 1] and m_end (S_0 in the state), mo_end [.., n, 1] and e_end [.., 1, 1] (the chunk-end
    momentum);
    score1 = C * (q k^T), the layer-1 read scores; with `factors`, layer 1's inputs with their per-token factors
    applied (ck_end, bq, mk_end, mq, kq = [k; beta q] stacked along time; the fused op applies them per chunk)."""
    if log_keep is not None and log_eta is not None and torch.is_grad_enabled():
        C, beta, c_end, beta_end, score1, m, m_end, mo_end, e_end = _DecayMomentumCoefficients.apply(
            theta, log_keep, log_eta, q, k)
        coef = dict(C=C, beta=beta, c_end=c_end, beta_end=beta_end, score1=score1, m=m, m_end=m_end,
                    mo_end=mo_end, e_end=e_end)
        return _add_factors(coef, q, k) if factors else coef
    return _coefficients_autograd(theta, log_keep, log_eta, q, k, factors)


def _coefficients_autograd(theta, log_keep, log_eta, q, k, factors):
    """`_coefficients` written with autograd: every case (without forgetting or momentum too), and the
    reference that `_DecayMomentumCoefficients` is tested against."""
    n = theta.shape[-1]
    lower = torch.ones(n, n, dtype=theta.dtype, device=theta.device).tril()
    if log_keep is None:
        log_keep = torch.zeros_like(theta)
    D, cum_keep = _decay_matrix(log_keep, lower)
    beta = cum_keep.exp().unsqueeze(-1)
    if log_eta is not None:
        Mo, cum_eta = _decay_matrix(log_eta, lower)
        Mo = Mo * theta.unsqueeze(-2)
        C = D @ Mo
        # m = D @ exp(cum_eta) as a product and a row sum: a batched matrix-vector product takes a slow path on
        # the CPU (forward and backward about 3 times the time)
        m = (D * cum_eta.exp().unsqueeze(-2)).sum(-1, keepdim=True)
        coef = {"m": m, "m_end": m[..., -1:, :], "mo_end": Mo[..., -1, :].unsqueeze(-1),
                "e_end": cum_eta[..., -1:].exp().unsqueeze(-1)}
    else:
        C, coef = D * theta.unsqueeze(-2), {}
    coef.update(C=C, beta=beta, beta_end=beta[..., -1:, :], c_end=C[..., -1, :].unsqueeze(-1))
    coef["score1"] = C * (q @ k.transpose(-1, -2))  # layer 1 reads with q and writes with k: state-free
    return _add_factors(coef, q, k) if factors else coef


class _DecayMomentumCoefficients(torch.autograd.Function):
    """`_coefficients` with forgetting and momentum (the Titans presets) and a hand-written backward: autograd's
    takes about three times the forward, most of it in masks, broadcasts and the zero-filled gradients of the
    chunk-end rows. Outputs: C, beta, c_end, beta_end, score1, m, m_end, mo_end, e_end (as in `_coefficients`).
    Backward: with P = dL/dD * D for a decay matrix D[t, s] = exp(cum[t] - cum[s]) (s <= t),
    dL/dcum[t] = sum_s P[t, s] - sum_s P[s, t]; the logs' gradients are reverse cumulative sums of those."""

    @staticmethod
    def forward(ctx, theta, log_keep, log_eta, q, k):
        ctx.set_materialize_grads(False)
        n = theta.shape[-1]
        lower = torch.ones(n, n, dtype=theta.dtype, device=theta.device).tril()
        Dk, cum_k = _decay_matrix(log_keep, lower)
        De, cum_e = _decay_matrix(log_eta, lower)
        beta, ee = cum_k.exp().unsqueeze(-1), cum_e.exp()
        Mo = De * theta.unsqueeze(-2)
        C = Dk @ Mo
        m = (Dk * ee.unsqueeze(-2)).sum(-1, keepdim=True)
        qk = q @ k.transpose(-1, -2)
        ctx.save_for_backward(theta, q, k, Dk, De, Mo, C, beta, ee, qk)
        # the chunk-end rows as copies (a custom function's outputs must not be views of each other)
        return (C, beta, C[..., -1, :, None].clone(), beta[..., -1:, :].clone(), C * qk, m, m[..., -1:, :].clone(),
                Mo[..., -1, :, None].clone(), ee[..., -1:, None].clone())

    @staticmethod
    def backward(ctx, gC, g_beta, g_c_end, g_beta_end, g_score1, g_m, g_m_end, g_mo_end, g_e_end):
        theta, q, k, Dk, De, Mo, C, beta, ee, qk = ctx.saved_tensors
        gC = torch.zeros_like(C) if gC is None else gC.clone()
        g_q = g_k = None
        if g_score1 is not None:
            gC.addcmul_(g_score1, qk)
            g_qk = g_score1 * C
            g_q, g_k = g_qk @ k, g_qk.transpose(-1, -2) @ q
        if g_c_end is not None:
            gC[..., -1, :] += g_c_end[..., 0]
        gDk = gC @ Mo.transpose(-1, -2)
        gMo = Dk.transpose(-1, -2) @ gC
        if g_mo_end is not None:
            gMo[..., -1, :] += g_mo_end[..., 0]
        g_cum_k = torch.zeros_like(beta[..., 0]) if g_beta is None else g_beta[..., 0] * beta[..., 0]
        if g_beta_end is not None:
            g_cum_k[..., -1:] += g_beta_end[..., 0] * beta[..., -1, :]
        g_cum_e = torch.zeros_like(ee)
        if g_m is not None or g_m_end is not None:
            gm = torch.zeros_like(C[..., :1]) if g_m is None else g_m.clone()
            if g_m_end is not None:
                gm[..., -1:, :] += g_m_end
            gDk.addcmul_(gm, ee.unsqueeze(-2))  # m = D ee
            g_cum_e += (Dk * gm).sum(-2) * ee
        if g_e_end is not None:
            g_cum_e[..., -1:] += g_e_end[..., 0] * ee[..., -1:]
        g_theta = (gMo * De).sum(-2)
        P_e = gMo.mul_(theta.unsqueeze(-2)).mul_(De)  # Mo = De theta_s
        g_cum_e += P_e.sum(-1) - P_e.sum(-2)
        P_k = gDk.mul_(Dk)
        g_cum_k += P_k.sum(-1) - P_k.sum(-2)
        rev_cumsum = lambda g: g.flip(-1).cumsum(-1).flip(-1)  # noqa: E731  (cum = cumsum(logs))
        return g_theta, rev_cumsum(g_cum_k), rev_cumsum(g_cum_e), g_q, g_k


def _add_factors(coef, q, k):
    """Layer 1's inputs k and q are known before the chunk loop, so its per-token factors are applied here, for
    all chunks in one product each, instead of to the chunk's outputs inside the loop:
    k^T (c_end * delta) = (c_end * k)^T delta, and beta_t (q_t A_0) = (beta_t q_t) A_0 (likewise m_t, S_0)."""
    coef["ck_end"] = (coef["c_end"] * k).transpose(-1, -2)
    coef["bq"] = coef["beta"] * q
    if "m" in coef:
        coef["mk_end"] = (coef["mo_end"] * k).transpose(-1, -2)
        coef["mq"] = coef["m"] * q
    coef["kq"] = torch.cat([k, coef["bq"]], dim=-2)  # one product k, beta q @ A_0 when the chunk starts here
    return coef


def _chunk_parallel(q, k, v, coef, bias_param, A, S, G, bias, retention, grad_clip=None, net=None, stats=None):
    """One chunk (or the part of one that falls in this call), batch-flat: q, k [N,n,d0], v [N,n,dL], coef
    from
    `_coefficients`; A, S: per-layer states [N, d_{l-1}, d_l] before the first token; G: the chunk-start
    states; net: the memory network (memory_net.py, default `mlp`); stats: the cap's counter (`count_capped`)."""
    net = net or MLPNet()
    if retention.chunk_scaled:  # l_q normalised at chunk boundaries (MIRAS 5.4): each layer's chunk-start scale
        scales = [retention.scale(g) for g in G]  # serves the gradients' weights and the dual-form reads
        weights_g = [g * s for g, s in zip(G, scales)]
    else:
        scales, weights_g = None, [retention.phi(g) for g in G]
    n = q.shape[1]
    shared = G is A and retention.linear  # the chunk starts here: k and q both meet A_0 in layer 1
    if shared:
        zk, qA0 = torch.bmm(coef["kq"], A[0]).split(n, dim=1)
    acts, deltas = mlp_with_grads(k, v, weights_g, bias, bias_param, zk if shared else None, net)
    if grad_clip is not None:
        deltas = clip_token_grads(acts, deltas, grad_clip, stats)
    C, beta, momentum = coef["C"], coef["beta"], S is not None
    r, new_A, new_S = q, [], []
    last = len(A) - 1
    for l in range(len(A)):
        a_t, d = acts[l].transpose(1, 2), deltas[l]
        # token i's gradient enters the chunk-end A with weight c_end[i] and S with mo_end[i] (layer 1: in k)
        ca_t, cd = (coef["ck_end"], d) if l == 0 else (a_t, coef["c_end"] * d)
        # the products and sums below accumulate in place into fresh temporaries that no backward formula
        # saves (one allocation per state instead of three; bitwise the same as the out-of-place ops)
        kept = coef["beta_end"] * A[l]
        if momentum:
            ma_t, md = (coef["mk_end"], d) if l == 0 else (a_t, coef["mo_end"] * d)
            new_A.append(kept.addcmul_(coef["m_end"], S[l]).baddbmm_(ca_t, cd))
            new_S.append((coef["e_end"] * S[l]).baddbmm_(ma_t, md))
        else:
            new_A.append(kept.baddbmm_(ca_t, cd))
        if retention.linear and l == 0:  # dual form, layer 1: beta and m ride on q (see _coefficients)
            bqA = qA0 if shared else torch.bmm(coef["bq"], A[0])
            base = torch.baddbmm(bqA, coef["mq"], S[0]) if momentum else bqA
            if shared and not momentum:  # base is a view of the product that gave zk, saved for backward
                z = torch.baddbmm(base, coef["score1"], d)
            else:
                z = base.baddbmm_(coef["score1"], d)
        elif not retention.materializes:  # dual form: no per-token weights
            rA = torch.bmm(r, A[l])
            base = (beta * rA).addcmul_(coef["m"], torch.bmm(r, S[l])) if momentum else beta * rA
            z = base.baddbmm_(C * torch.bmm(r, a_t), d)
            if scales is not None:
                z = z * scales[l]
        else:  # materialise the chunk's per-token states, apply phi to each
            A_t = beta.unsqueeze(-1) * A[l].unsqueeze(1) + torch.einsum("nti,nia,nic->ntac", C, acts[l], d)
            if momentum:
                A_t = A_t + coef["m"].unsqueeze(-1) * S[l].unsqueeze(1)
            W_t = retention.phi(A_t)
            z = torch.einsum("nta,ntac->ntc", r, net.last_weight(W_t) if l == last else W_t)
        r = net.act(z) if l < last else net.head(q, z)
    return r, new_A, (new_S if momentum else None)


def _walk(T, chunk_size, pos):
    """(start, length) of the pieces of a call of T tokens at stream position pos, cut at chunk boundaries."""
    t = 0
    while t < T:
        n = min(chunk_size - (pos + t) % chunk_size, T - t)
        yield t, n
        t += n


def memory_parallel(q, k, v, theta, log_keep, log_eta, state, chunk_size, bias, retention, bias_param=None,
                    grad_clip=None, fused=None, net=None, stats=None, recompute=None):
    """Write every token into the memory and read each one back after its write, chunk-parallel.

    q, k [B,H,T,d_in]; v [B,H,T,d_out]; theta [B,H,T] (inner learning rate); log_keep = log(1 - alpha) [B,H,T]
    or None (no forgetting); log_eta = log(momentum) [B,H,T] or None (no momentum); bias_param [B,H,T,1] or None;
    grad_clip: cap on the Frobenius norm of every token's gradient per layer (None: no cap); stats: a dict
    that counts the capped gradients (memory_net.count_capped) or None. net: the memory network (memory_net.py;
    None: `mlp`).
    state = {"A": [per-layer [B,H,d_{l-1},d_l]], "S": [...] or None, "G": [...], "pos": int}.
    fused: run the whole chunks through `fused_run` (one autograd node with a hand-written backward, the same
    math); None: wherever it applies (the l2 bias with linear retention); False: autograd through
    `_chunk_parallel` per chunk, the path the fused one is tested against. recompute: see `run_chunks`.
    Returns y [B,H,T,d_out] and the new state."""
    net = net or MLPNet()
    fusable = retention.linear and isinstance(bias, L2Bias) and net.name == "mlp"
    if fused and not fusable:
        raise HarnessError(f"the fused memory op covers the l2 bias with linear retention and the mlp memory, "
                           f"not {bias.name} with {retention.name} and {net.name}; use fused=None or False")
    fused = fusable if fused is None else fused
    Bsz, H, T = q.shape[:3]
    flat_list = lambda xs: None if xs is None else [x.flatten(0, 1) for x in xs]  # noqa: E731
    A, S, G, pos = flat_list(state["A"]), flat_list(state["S"]), flat_list(state["G"]), state["pos"]
    # the bias's gradient scale rides on theta (an exact power of two for l2 and Huber), and so does the cap
    scale = bias.grad_scale
    theta = theta * -scale
    grad_clip = None if grad_clip is None else grad_clip / scale
    outs = []
    for is_run, starts_chunk, (qc, kc, vc, pc, coef) in _cut(_walk(T, chunk_size, pos), chunk_size, pos, q, k, v,
                                                             theta, log_keep, log_eta, bias_param, fused):
        if is_run and fused:  # whole chunks, chunk-major [nc, B*H, n, ...]: each starts its own chunk
            y, A, S, G = fused_chunk_run(qc, kc, vc, coef, A, S, grad_clip, unfused_l2_run, stats)
            outs.append(y.movedim(0, 1).reshape(Bsz, H, -1, y.shape[-1]))
            continue
        if is_run:
            chunks = run_chunks_compiled if torch.compiler.is_compiling() else run_chunks
            ys, A, S, G = chunks(qc, kc, vc, pc, coef, A, S, bias, retention, grad_clip, net, stats,
                                 recompute=recompute)
            outs.extend(y.unflatten(0, (Bsz, H)) for y in ys)
            continue
        if starts_chunk:
            G = A
        y, A, S = _chunk_parallel(qc, kc, vc, coef, pc, A, S, G, bias, retention, grad_clip, net, stats)
        outs.append(y.unflatten(0, (Bsz, H)))
    unflat = lambda xs: None if xs is None else [x.unflatten(0, (Bsz, H)) for x in xs]  # noqa: E731
    y = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
    return y, {"A": unflat(A), "S": unflat(S), "G": unflat(G), "pos": pos + T}


def run_chunks(q, k, v, bias_param, coef, A, S, bias, retention, grad_clip, net=None, stats=None,
               chunk_fn=None, recompute=None):
    """Whole chunks laid out chunk-major ([nc, B*H, n, ...], coefficients with their factors), each through
    `_chunk_parallel` (or chunk_fn, its compiled form) under autograd: the unfused path, and the fused op's route
    to higher-order gradients. Returns the per-chunk outputs, the end states and the last chunk's start states.

    recompute (None: where the retention materialises every token's weights; only while autograd records): each
    chunk keeps its inputs for backward and is run again there (torch.utils.checkpoint). Such a retention
    (Memora's softmax, Moneta's l_q with lq_normalize="token") forms every token's weights, [B*H, n, d, d'] per
    layer; storing them for every chunk, one 512-token sequence of MIRAS-Memora `small` peaked at 19 GB of RSS
    (9.8 GB recomputed, ~25 % slower). The result is the same computation (tested equal); the cap's counters
    count the first run only."""
    chunk_fn = chunk_fn or _chunk_parallel
    recompute = (retention.materializes if recompute is None else recompute) and torch.is_grad_enabled()
    per_chunk = {key: val.unbind(0) for key, val in coef.items()}  # unbind: backward is one stack
    cols = [x.unbind(0) if x is not None else [None] * len(v) for x in (q, k, v, bias_param)]
    ys, G = [], A
    for j in range(len(v)):
        G = A  # every chunk of the run starts at a chunk boundary
        inputs = (*(c[j] for c in cols[:3]), {key: val[j] for key, val in per_chunk.items()}, cols[3][j], A, S, G)
        if recompute:
            y, A, S = checkpoint(_CountedOnce(chunk_fn, bias, retention, grad_clip, net, stats), *inputs,
                                 use_reentrant=False)
        else:
            y, A, S = chunk_fn(*inputs, bias, retention, grad_clip, net, stats)
        ys.append(y)
    return ys, A, S, G


def unfused_l2_run(q, k, v, coef, A, S, clip):
    """The fused op's case (the l2 bias, linear retention, the mlp memory) through `run_chunks` under autograd;
    coef without its factors, as `fused_chunk_run` takes it. The fused op's backward differentiates this where it
    cannot use its own (higher-order gradients, a second backward)."""
    return run_chunks(q, k, v, None, _add_factors(coef, q, k), A, S, L2Bias(), DecayRetention(), clip)


class _CountedOnce:
    """chunk_fn(*inputs, bias, retention, grad_clip, net, stats) for torch.utils.checkpoint: the recomputation
    in backward passes no stats, so the cap's capped gradients are counted once."""

    def __init__(self, chunk_fn, bias, retention, grad_clip, net, stats):
        self.fn, self.rest, self.stats = chunk_fn, (bias, retention, grad_clip, net), stats

    def __call__(self, *inputs):
        stats, self.stats = self.stats, None
        return self.fn(*inputs, *self.rest, stats)


@functools.cache
def _compiled_chunk_parallel():
    return torch.compile(_chunk_parallel, dynamic=False)


@torch.compiler.disable
def run_chunks_compiled(*args, recompute=None):
    """`run_chunks` inside a torch.compile'd model: the loop over chunks runs in Python and every chunk goes
    through one compiled `_chunk_parallel` (compiled once per shape and reused by every chunk). Traced whole,
    dynamo would unroll the loop into one graph whose compile time grows with the number of chunks (about
    5 minutes for 4 chunks of MIRAS-Memora tiny on one CPU core)."""
    return run_chunks(*args, chunk_fn=_compiled_chunk_parallel(), recompute=recompute)


def _cut(pieces, chunk_size, pos, q, k, v, theta, log_keep, log_eta, bias_param, fused):
    """The call's inputs cut at chunk boundaries, in time order: (is_run, starts_chunk, (q, k, v, bias_param,
    coefficients)). Whole chunks that follow each other form one run, laid out chunk-major ([chunks, B*H, n,
    ...]: one copy, which flattening B and H needs anyway), so that each chunk's inputs and coefficients are
    contiguous blocks (several percent faster on the CPU than strided slices of [B*H, T, ...]) and the
    coefficients of all of them are computed in one batch. Every other piece is batch-flat [B*H, n, ...]. Every
    input is cut along time with one split (its backward is one concatenation; a slice's zero-fills a full-size
    gradient)."""
    pieces = list(pieces)
    full = [i for i, (_, n) in enumerate(pieces) if n == chunk_size]
    # (the fused op takes a single whole chunk too; per-chunk autograd gains nothing from the layout for one)
    run = full if len(full) > (0 if fused else 1) and full == list(range(full[0], full[-1] + 1)) else []
    # spans of time to cut: the run of whole chunks as one span, every other piece as its own
    spans = [[i] for i in range(len(pieces)) if i not in run]
    if run:
        spans.insert(sum(1 for span in spans if span[0] < run[0]), run)
    lengths = [sum(pieces[i][1] for i in span) for span in spans]
    cut = [[None] * len(spans) if x is None else x.split(lengths, dim=2)
           for x in (q, k, v, bias_param, theta, log_keep, log_eta)]
    out = []
    for s, span in enumerate(spans):
        parts = [c[s] for c in cut]
        if span is run:  # [B, H, nc * chunk, ...] -> [nc, B*H, chunk, ...], contiguous
            nc = len(run)
            parts = [None if x is None else x.unflatten(2, (nc, chunk_size)).movedim(2, 0).reshape(
                nc, -1, chunk_size, *x.shape[3:]) for x in parts]
            qm, km, vm, pm, th, lk, le = parts
            out.append((True, True, (qm, km, vm, pm, _coefficients(th, lk, le, qm, km, factors=not fused))))
        else:
            qc, kc, vc, pc, th, lk, le = (None if x is None else x.flatten(0, 1) for x in parts)
            starts_chunk = (pos + pieces[span[0]][0]) % chunk_size == 0
            out.append((False, starts_chunk, (qc, kc, vc, pc, _coefficients(th, lk, le, qc, kc))))
    return out


def memory_naive(q, k, v, theta, log_keep, log_eta, state, chunk_size, bias, retention, bias_param=None,
                 grad_clip=None, net=None):
    """Reference: the recurrence walked one token at a time, with the per-token gradient taken by
    torch.func.grad
    of the bias's loss (not the closed form) at the chunk-start weights."""
    A, S, G, pos = list(state["A"]), state["S"], list(state["G"]), state["pos"]
    outs = []
    for t in range(q.shape[2]):
        if (pos + t) % chunk_size == 0:
            G = A
        kt, vt = k[:, :, t:t + 1], v[:, :, t:t + 1]
        bp = None if bias_param is None else bias_param[:, :, t:t + 1]

        def inner_loss(weights):
            return bias.loss(mlp_apply(kt, weights, net) - vt, bp).sum()

        grads = torch.func.grad(inner_loss)([retention.phi(g) for g in G])
        if grad_clip is not None:  # the per-token norm of each layer's full gradient matrix
            grads = [u * (grad_clip / u.flatten(-2).norm(dim=-1).clamp_min(grad_clip))[..., None, None]
                     for u in grads]
        th = theta[:, :, t, None, None]
        keep = 1.0 if log_keep is None else log_keep[:, :, t, None, None].exp()
        if log_eta is not None:
            S = [log_eta[:, :, t, None, None].exp() * s - th * u for s, u in zip(S, grads)]
            A = [keep * a + s for a, s in zip(A, S)]
        else:
            A = [keep * a - th * u for a, u in zip(A, grads)]
        outs.append(mlp_apply(q[:, :, t:t + 1], [retention.read_weights(a, g) for a, g in zip(A, G)], net))
    return torch.cat(outs, dim=2), {"A": A, "S": S, "G": G, "pos": pos + q.shape[2]}
