"""A run of whole chunks of the memory op (models/titans/ops.py) as one autograd node with a hand-written backward.

The same math as `ops._chunk_parallel` applied chunk after chunk (Titans eqs. 12-15, section 3.2), for the common
case: the l2 attentional bias (the inner gradient direction is the error M(k) - v itself) and linear retention
(W = A). Under autograd the ~40 small ops per chunk each add a graph node, `addcmul` backwards make four
full-size products each, and gradients are summed in separate passes; written by hand, the backward accumulates
in place into its own buffers and touches each state-sized tensor fewer times. The backward walks the chunks in
reverse, carrying the gradients of the states (A, S), and takes the second-order terms of the memory MLP's
closed-form gradient (its `delta`s depend on the chunk-start weights) explicitly. `tests/test_titans_fused.py`
checks it against autograd through the unfused path in float64, and by finite differences.

Per chunk, layers l = 0..L-1 with weights W_l = A_l at the chunk start, a_0 = k, a_{l+1} = h_l = silu(z_l):
    z_l = a_l W_l;  delta_{L-1} = z_{L-1} - v;  e_l = delta_{l+1} W_{l+1}^T;  delta_l = e_l * silu'(z_l)
    dc_l = delta_l * f_l,  f_l = clip / max(clip, |a_l| |delta_l|) per token (f = 1 without a clip)
    A_l' = beta_end A_l + m_end S_l + a_l^T (c_end dc_l),  S_l' = e_end S_l + a_l^T (mo_end dc_l)
    read: z^r_0 = beta q A_0 + m q S_0 + (C * q k^T) dc_0;  r_{l} = silu(z^r_{l-1})
          z^r_l = beta (r_l A_l) + m (r_l S_l) + (C * r_l a_l^T) dc_l;  y = z^r_{L-1}
Layer 0's per-token factors ride on its inputs, formed per chunk: kq = [k; beta q] (one product with A_0 gives
both k A_0 and beta q A_0), mq = m q, ck_t = (c_end k)^T, mk_t = (mo_end k)^T; score1 = C * q k^T comes from
`ops._coefficients` for all chunks at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.titans.memory_net import count_capped

_T = lambda x: x.transpose(1, 2)  # noqa: E731  (per-batch matrix transpose of [N, a, b])


def _dot(x, y):
    """Per-batch Frobenius inner product of [N, a, b] tensors -> [N, 1, 1] (a product and a sum: about 4 times
    faster on the CPU than a batched [1, ab] x [ab, 1] matrix product)."""
    return (x * y).sum((1, 2), keepdim=True)


def _mm(acc, x, y):
    """acc + x @ y (batched), accumulated in place: acc is None or a buffer of this backward."""
    return torch.bmm(x, y) if acc is None else acc.baddbmm_(x, y)


def _mix(acc, coef, x):
    """acc + coef * x, in place as `_mm`."""
    return coef * x if acc is None else acc.addcmul_(coef, x)


class _ChunkRun(torch.autograd.Function):
    """The run of whole chunks (see the module doc); `fused_chunk_run` is its entry point."""

    @staticmethod
    def forward(ctx, n_layers, momentum, clip, keep, stats, unfused, q, k, v, C, beta, c_end, beta_end, score1,
                m, m_end, mo_end, e_end, *states):
        ctx.set_materialize_grads(False)
        L, nc, n = n_layers, q.shape[0], q.shape[2]
        A = list(states[:L])
        S = list(states[L:]) if momentum else None
        ys, per_chunk, norms = [], [], []  # norms: the per-token gradient norms, for the cap's counter
        for j in range(nc):
            # layer 0's per-token factors ride on its inputs: beta q, m q, (c_end k)^T, (mo_end k)^T
            kq = torch.cat([k[j], beta[j] * q[j]], dim=1)
            ck_t = _T(c_end[j] * k[j])
            mq, mk_t = (m[j] * q[j], _T(mo_end[j] * k[j])) if momentum else (None, None)
            zk, qA0 = torch.bmm(kq, A[0]).split(n, dim=1)
            # the memory MLP at the chunk-start weights and its closed-form backward (memory_net.mlp_with_grads)
            acts, sigs, sgs, d2s, es = [k[j]], [], [], [], []
            for l in range(L - 1):
                z = zk if l == 0 else torch.bmm(acts[l], A[l])
                s = torch.sigmoid(z)
                sigs.append(s), acts.append(z * s)
            out = zk if L == 1 else torch.bmm(acts[-1], A[-1])
            delta = out - v[j]
            deltas = [delta]
            for l in range(L - 2, -1, -1):
                s, h = sigs[l], acts[l + 1]
                sg = torch.addcmul(s + h, h, s, value=-1.0)  # silu'(z) = s + h - h s
                e = torch.bmm(delta, _T(A[l + 1]))
                delta = e * sg
                deltas.insert(0, delta), sgs.insert(0, sg), es.insert(0, e)
                if keep:  # silu''(z) = s (1 - s) (2 + z (1 - 2 s)) = (1 - s) (sg + s - h s), for backward
                    d2s.insert(0, torch.addcmul(sg + s, h, s, value=-1.0).mul_(1 - s))
            clips = []
            if clip is not None:  # memory_net.clip_token_grads
                dcs = []
                for a, d in zip(acts, deltas):
                    na = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
                    nd = torch.linalg.vector_norm(d, dim=-1, keepdim=True)
                    norm = na * nd
                    f = clip / norm.clamp_min(clip)
                    dcs.append(d * f)
                    clips.append((na, nd, norm, f))
                    norms.append(norm)
            else:
                dcs = deltas
            # per layer: the chunk-end states (in the same order of operations as ops._chunk_parallel), then
            # the reads after every write in dual form, next to them while A_l and S_l are in cache
            new_A, new_S = [], []
            reads = []  # per layer l >= 1: (r_l, z^r_{l-1}, r_l a_l^T)
            for l in range(L):
                d = dcs[l]
                ca_t, cd = (ck_t, d) if l == 0 else (_T(acts[l]), c_end[j] * d)
                kept = beta_end[j] * A[l]
                if momentum:
                    ma_t, md = (mk_t, d) if l == 0 else (_T(acts[l]), mo_end[j] * d)
                    new_A.append(kept.addcmul_(m_end[j], S[l]).baddbmm_(ca_t, cd))
                    new_S.append((e_end[j] * S[l]).baddbmm_(ma_t, md))
                else:
                    new_A.append(kept.baddbmm_(ca_t, cd))
                if l == 0:
                    z = (torch.baddbmm(qA0, mq, S[0]) if momentum else qA0).baddbmm_(score1[j], d)
                    continue
                r = F.silu(z)
                rA = torch.bmm(r, A[l])
                rS = torch.bmm(r, S[l]) if momentum else None
                P = torch.bmm(r, _T(acts[l]))
                base = (beta[j] * rA).addcmul_(m[j], rS) if momentum else beta[j] * rA
                reads.append((r, z, P))
                z = base.baddbmm_(C[j] * P, d)
            ys.append(z)
            if keep:
                per_chunk.append(dict(A=A, S=S, kq=kq, ck_t=ck_t, mq=mq, mk_t=mk_t, acts=acts, d2s=d2s, sgs=sgs,
                                      es=es, deltas=deltas, dcs=dcs, clips=clips, reads=reads))
            G, A, S = A, new_A, (new_S if momentum else None)
        count_capped(stats, norms, clip)  # one count for the whole run, never read here (no device sync)
        ctx.n_layers, ctx.momentum, ctx.clip, ctx.per_chunk, ctx.unfused = L, momentum, clip, per_chunk, unfused
        ctx.save_for_backward(q, k, v, C, beta, c_end, beta_end, score1, m, m_end, mo_end, e_end, *states)
        # the last chunk's start states are the op's G, returned as copies (an input must not be returned as
        # itself, and an output kept on ctx would make a reference cycle)
        G = [g.clone() for g in G]
        return (torch.stack(ys), *A, *(S or ()), *G)

    @staticmethod
    def backward(ctx, gy, *g_out):
        if torch.is_grad_enabled() or ctx.per_chunk is None:
            # create_graph (higher-order gradients), or a second backward (retain_graph) after the first freed the
            # per-chunk tensors: differentiate the unfused path under autograd instead (the same math, slower)
            return (None, None, None, None, None, None, *_backward_through_autograd(ctx, gy, g_out))
        per_chunk, ctx.per_chunk = ctx.per_chunk, None
        return (None, None, None, None, None, None, *_backward_by_hand(ctx, per_chunk, gy, g_out))


def _backward_through_autograd(ctx, gy, g_out):
    """The gradients of every tensor input of `_ChunkRun.forward` by autograd through the unfused path, recomputed
    from the saved inputs (with create_graph, themselves differentiable) by the caller's `unfused` run."""
    L, momentum = ctx.n_layers, ctx.momentum
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        # fresh aliases of the inputs: the gradients below stop at them and never run the caller's graph (some
        # inputs are views of, or functions of, others: beta_end of beta, score1 of C, q and k), while with
        # create_graph they stay connected to the inputs for the next order
        inputs = [None if t is None else t.view_as(t) for t in ctx.saved_tensors]
        q, k, v, C, beta, c_end, beta_end, score1, m, m_end, mo_end, e_end, *states = inputs
        coef = dict(C=C, beta=beta, c_end=c_end, beta_end=beta_end, score1=score1)
        if momentum:
            coef.update(m=m, m_end=m_end, mo_end=mo_end, e_end=e_end)
        ys, A, S, G = ctx.unfused(q, k, v, coef, states[:L], states[L:] if momentum else None, ctx.clip)
        outputs = [torch.stack(ys), *A, *(S or ()), *G]
    pairs = [(o, g) for o, g in zip(outputs, (gy, *g_out)) if g is not None]
    wrt = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
    grads = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wrt], [g for _, g in pairs],
                                create_graph=create_graph, allow_unused=True)
    out = [None] * len(inputs)
    for i, g in zip(wrt, grads):
        out[i] = g
    return out


@torch.no_grad()
def _backward_by_hand(ctx, per_chunk, gy, g_out):
    """The gradients of every tensor input of `_ChunkRun.forward`, by hand (see the module doc); per_chunk: what the
    forward kept, freed chunk by chunk as the reverse walk passes it."""
    L, momentum, clip = ctx.n_layers, ctx.momentum, ctx.clip
    q, k, v, C, beta, c_end, beta_end, score1, m, m_end, mo_end, e_end = ctx.saved_tensors[:12]
    nc, N, n = q.shape[:3]
    gA = list(g_out[:L])
    gS = list(g_out[L:2 * L]) if momentum else [None] * L
    gG = g_out[2 * L if momentum else L:]
    if gy is None:
        gy = v.new_zeros(nc, N, n, per_chunk[0]["A"][-1].shape[-1])
    # gradient buffers, contiguous (the out= products below write into their chunk slices)
    zeros = lambda x: None if x is None else x.new_zeros(x.shape)  # noqa: E731
    empty = lambda x: None if x is None else x.new_empty(x.shape)  # noqa: E731
    g_q, g_k, g_v, g_score1 = (empty(t) for t in (q, k, v, score1))
    g_C, g_beta, g_c_end, g_beta_end = (zeros(t) for t in (C, beta, c_end, beta_end))
    g_m, g_m_end, g_mo_end, g_e_end = (zeros(t) for t in (m, m_end, mo_end, e_end))
    for j in range(nc - 1, -1, -1):
        c = per_chunk[j]
        A, S, acts, dcs = c["A"], c["S"], c["acts"], c["dcs"]
        g_ck_t = g_mk_t = None  # gradients of layer 0's factored inputs (c_end k)^T, (mo_end k)^T
        # gradients of this chunk's start states and of its per-layer dc and a (a_0 = k), accumulated in
        # place: every state-sized pass counts (these tensors do not stay in cache between chunks)
        gAs = [g.clone() if (j == nc - 1 and g is not None) else None for g in gG]
        gSs, g_dc, g_a = [None] * L, [None] * L, [None] * L

        # chunk-end states: A' = beta_end A + m_end S + a^T (c_end dc), S' = e_end S + a^T (mo_end dc)
        for l in range(L):
            gAl, gSl, d = gA[l], gS[l], dcs[l]
            if gAl is not None:
                gAs[l] = _mix(gAs[l], beta_end[j], gAl)
                g_beta_end[j].add_(_dot(gAl, A[l]))
                if momentum:
                    gSs[l] = _mix(gSs[l], m_end[j], gAl)
                    g_m_end[j].add_(_dot(gAl, S[l]))
            if gSl is not None:
                gSs[l] = _mix(gSs[l], e_end[j], gSl)
                g_e_end[j].add_(_dot(gSl, S[l]))
            if l == 0:
                if gAl is not None:
                    g_ck_t = torch.bmm(gAl, _T(d))
                    g_dc[0] = _mm(g_dc[0], _T(c["ck_t"]), gAl)
                if gSl is not None:
                    g_mk_t = torch.bmm(gSl, _T(d))
                    g_dc[0] = _mm(g_dc[0], _T(c["mk_t"]), gSl)
                continue
            for g_state, coef, g_coef in ((gAl, c_end, g_c_end), (gSl, mo_end, g_mo_end)):
                if g_state is None:
                    continue
                g_a[l] = _mm(g_a[l], coef[j] * d, _T(g_state))
                g_cd = torch.bmm(acts[l], g_state)
                g_coef[j].add_((g_cd * d).sum(-1, keepdim=True))
                g_dc[l] = _mix(g_dc[l], coef[j], g_cd)

        # reads, from the top layer down
        gz = gy[j]
        for l in range(L - 1, 0, -1):
            r, zr, P = c["reads"][l - 1]
            # z = beta (r A) + m (r S) + ...: with u = gz A^T, g_r = beta u and g_beta = sum(r u) (so r A
            # need not be kept from the forward); likewise w = gz S^T for m
            u = torch.bmm(gz, _T(A[l]))
            g_beta[j].add_((r * u).sum(-1, keepdim=True))
            g_r = u.mul_(beta[j])
            gAs[l] = _mm(gAs[l], _T(r), beta[j] * gz)
            if momentum:
                w = torch.bmm(gz, _T(S[l]))
                g_m[j].add_((r * w).sum(-1, keepdim=True))
                g_r.addcmul_(m[j], w)
                gSs[l] = _mm(gSs[l], _T(r), m[j] * gz)
            g_dc[l] = _mm(g_dc[l], _T(C[j] * P), gz)
            gCP = torch.bmm(gz, _T(dcs[l]))
            g_C[j].addcmul_(gCP, P)
            gP = gCP.mul_(C[j])
            g_r.baddbmm_(gP, acts[l])
            g_a[l] = _mm(g_a[l], _T(gP), r)
            gz = torch.ops.aten.silu_backward(g_r, zr)
        g_qA0 = gz
        g_mq = None
        if momentum:
            g_mq = torch.bmm(gz, _T(S[0]))
            gSs[0] = _mm(gSs[0], _T(c["mq"]), gz)
        torch.bmm(gz, _T(dcs[0]), out=g_score1[j])
        g_dc[0] = _mm(g_dc[0], _T(score1[j]), gz)

        # the per-token clip: dc = delta f, f = clip / max(clip, |a| |delta|)
        g_delta = g_dc
        if clip is not None:
            g_delta = []
            for l, (na, nd, norm, f) in enumerate(c["clips"]):
                delta = c["deltas"][l]
                g_f = (g_dc[l] * delta).sum(-1, keepdim=True)
                # where the cap bites, f = clip / (|a| |delta|): d f = -f (d|a| / |a| + d|delta| / |delta|),
                # written with norm^2 = |a|^2 |delta|^2 so that nothing divides by a zero row norm
                w = torch.where(norm >= clip, g_f * f, 0.0).div_(norm.clamp_min(clip).square()).neg_()
                g_delta.append(torch.addcmul(g_dc[l] * f, delta, w * na.square()))
                g_norm_a = acts[l] * (w * nd.square())
                g_a[l] = g_norm_a if g_a[l] is None else g_a[l].add_(g_norm_a)

        # second-order terms: delta_l = (delta_{l+1} W_{l+1}^T) silu'(z_l), bottom up
        g_h = g_a[1:]  # gradients of h_l = a_{l+1}
        g_sg = [None] * (L - 1)
        gd = g_delta[0]
        for l in range(L - 1):
            g_e = gd * c["sgs"][l]
            g_sg[l] = gd * c["es"][l]
            gd = torch.baddbmm(g_delta[l + 1], g_e, A[l + 1])
            gAs[l + 1] = _mm(gAs[l + 1], _T(g_e), c["deltas"][l + 1])
        # gd: the gradient of delta_{L-1} = z_{L-1} - v; the MLP forward, top down
        torch.neg(gd, out=g_v[j])
        g_z = gd
        for l in range(L - 1, 0, -1):
            gAs[l] = _mm(gAs[l], _T(acts[l]), g_z)
            g_hl = torch.baddbmm(g_h[l - 1], g_z, _T(A[l]))  # h_{l-1} feeds z_l
            # h = silu(z) and sg = silu'(z): g_z = g_h silu'(z) + g_sg silu''(z)
            g_z = torch.addcmul(g_hl * c["sgs"][l - 1], g_sg[l - 1], c["d2s"][l - 1])
        g_in = torch.cat([g_z, g_qA0], dim=1)
        g_k0, g_bq = torch.bmm(g_in, _T(A[0])).split(n, dim=1)
        gAs[0] = _mm(gAs[0], _T(c["kq"]), g_in)
        # back through layer 0's factored inputs to q, k and the factors
        qj, kj = q[j], k[j]
        g_beta[j].add_((g_bq * qj).sum(-1, keepdim=True))
        g_qj = torch.mul(beta[j], g_bq, out=g_q[j])
        g_kj = torch.add(g_k0, g_a[0], out=g_k[j]) if g_a[0] is not None else g_k[j].copy_(g_k0)
        if g_ck_t is not None:
            g_ck = _T(g_ck_t)
            g_c_end[j].add_((g_ck * kj).sum(-1, keepdim=True))
            g_kj.addcmul_(c_end[j], g_ck)
        if g_mq is not None:
            g_m[j].add_((g_mq * qj).sum(-1, keepdim=True))
            g_qj.addcmul_(m[j], g_mq)
        if g_mk_t is not None:
            g_mk = _T(g_mk_t)
            g_mo_end[j].add_((g_mk * kj).sum(-1, keepdim=True))
            g_kj.addcmul_(mo_end[j], g_mk)
        gA, gS = gAs, (gSs if momentum else [None] * L)
        per_chunk[j] = None  # freed as it goes, as autograd frees a node's saved tensors
    return (g_q, g_k, g_v, g_C, g_beta, g_c_end, g_beta_end, g_score1,
            g_m, g_m_end, g_mo_end, g_e_end, *gA, *(gS if momentum else ()))


@torch.compiler.disable  # see below
def fused_chunk_run(q, k, v, coef, A, S, clip, unfused, stats=None):
    """Runs whole chunks laid out chunk-major: q, k [nc, N, n, d0], v [nc, N, n, dL], coef from
    `ops._coefficients(..., factors=False)` over the same layout, A and S (or None) per-layer states
    [N, d_l, d_{l+1}] before the first chunk; clip: the per-token gradient cap (already divided by the bias's
    gradient scale) or None; unfused: the same run under autograd, `unfused(q, k, v, coef, A, S, clip) -> (ys, A,
    S, G)` (`ops.unfused_l2_run`), which a higher-order or second backward differentiates (passed in, so this
    module does not import ops, which imports it); stats: the cap's counter (memory_net.count_capped) or None.
    Returns y [nc, N, n, dL], the states after the last chunk and the last chunk's start states.

    Under torch.compile this op runs eagerly (a graph break before and after it): dynamo cannot trace the
    hand-written backward, whose in-place accumulation into per-chunk slices of its gradient buffers it rejects
    ("an intermediate tensor ... aliases an input or output", torch 2.13); the rest of the model compiles."""
    momentum = S is not None
    get = lambda key: coef[key] if momentum else None  # noqa: E731
    # keep what backward needs only when there will be one (without a graph, memory stays flat along a stream)
    inputs = (q, k, v, *coef.values(), *A, *(S or ()))
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    out = _ChunkRun.apply(len(A), momentum, clip, keep, stats, unfused, q, k, v, coef["C"], coef["beta"], coef["c_end"],
                          coef["beta_end"], coef["score1"], get("m"), get("m_end"), get("mo_end"),
                          get("e_end"), *A, *(S or ()))
    L = len(A)
    y, new_A = out[0], list(out[1:1 + L])
    new_S = list(out[1 + L:1 + 2 * L]) if momentum else None
    G = list(out[1 + 2 * L if momentum else 1 + L:])
    return y, new_A, new_S, G
