"""Norms, the SwiGLU MLP, rotary position embeddings and the short causal depthwise convolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _RMSNormFunction(torch.autograd.Function):
    """y = x * rstd * w with rstd = rsqrt(mean(x^2) + eps) over the last dim, with a hand-written backward:
        gx = rstd * (g w - x_hat * mean(g w x_hat)),  gw = sum over rows of g x_hat   (x_hat = x * rstd)
    On the CPU, nn.RMSNorm's composite backward makes about twice as many full-size passes."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        # the same ops in the same order as nn.RMSNorm's CPU forward, so the outputs are bitwise equal
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))
        x_hat = x * rstd
        ctx.save_for_backward(x_hat, rstd, weight)
        return x_hat * weight if weight is not None else x_hat

    @staticmethod
    def backward(ctx, grad):
        x_hat, rstd, weight = ctx.saved_tensors
        grad_x = grad_w = None
        g_w = grad * weight if weight is not None else grad
        if ctx.needs_input_grad[0]:
            dot = (g_w * x_hat).mean(-1, keepdim=True)
            grad_x = torch.addcmul(g_w, x_hat, dot, value=-1.0).mul_(rstd)
        if weight is not None and ctx.needs_input_grad[1]:
            grad_w = (grad * x_hat).sum(tuple(range(grad.dim() - 1)))  # no flatten: grad may be strided
        return grad_x, grad_w, None


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm (same parameters and state dict) with a faster backward on the CPU for the usual float32 /
    float64 normalisation over the last dimension; other devices, dtypes and shapes use PyTorch's own kernels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
                or len(self.normalized_shape) != 1 or not torch.is_grad_enabled()):
            return super().forward(x)
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        return _RMSNormFunction.apply(x, self.weight, eps)


class SwiGLU(nn.Module):
    """y = W_out (silu(W_gate x) * W_up x)  (Shazeer 2020). `hidden` defaults to 8/3 d rounded to 32, which keeps
    the parameter count of a 4d GELU MLP."""

    def __init__(self, dim: int, hidden: int | None = None, bias: bool = False):
        super().__init__()
        hidden = hidden or 32 * ((8 * dim // 3 + 31) // 32)
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021). `forward(positions)` gives (cos, sin) of shape [T, head_dim/2]."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor):
        freqs = torch.outer(positions.float(), self.inv_freq)
        return freqs.cos(), freqs.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :d/2], x[..., d/2:]) of x [..., T, d] by the angles of positions (cos, sin [T, d/2]):
    (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos), computed as x [cos, cos] + [x2, x1] [-sin, sin], which gives
    the same bits with fewer full-size passes forward and backward."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))  # half precisions rotate in float32
    x1, x2 = xf.chunk(2, dim=-1)
    out = xf * torch.cat([cos, cos], dim=-1) + torch.cat([x2, x1], dim=-1) * torch.cat([-sin, sin], dim=-1)
    return out.type_as(x)


class _CausalTaps(torch.autograd.Function):
    """y[:, t] = bias + sum_j w[j] * p[:, t + j], p = [state; x] the input after its K - 1 remembered steps
    (x [B, T, C], state [B, K-1, C], w [K, C] contiguous), computed tap by tap from x and state directly: no
    concatenated copy forward and x's gradient contiguous backward. The backward is hand-written: autograd of
    the slices would zero-fill and copy a full-size gradient per tap, and addcmul's backward makes an extra
    scaled copy of its input; here each tap is one in-place multiply-add. Every sum runs in the same order as
    over the concatenation, so the results are bitwise those of the convolution written over p."""

    @staticmethod
    def forward(ctx, x, state, w, bias):
        K, T = w.shape[0], x.shape[1]
        y = x.new_empty(x.shape)
        for j in range(K):
            lo = min(K - 1 - j, T)  # tap j looks K-1-j steps back: rows [0, lo) read the state, the rest x
            if j == 0:
                torch.addcmul(bias, x[:, :T - lo], w[0], out=y[:, lo:])
                torch.addcmul(bias, state[:, :lo], w[0], out=y[:, :lo])
            else:
                y[:, lo:].addcmul_(x[:, :T - lo], w[j])
                y[:, :lo].addcmul_(state[:, j:j + lo], w[j])
        ctx.save_for_backward(x, state, w)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, state, w = ctx.saved_tensors
        K, T, k = w.shape[0], grad.shape[1], w.shape[0] - 1
        need_x, need_state, need_w, need_bias = ctx.needs_input_grad
        grad_x = grad_state = grad_w = grad_bias = None
        if need_x:  # x[t] meets grad[t + s] through the tap that looks s = K-1-j back, taps in order j = 0..
            grad_x = x.new_empty(x.shape)
            head = max(T - k, 0)
            torch.mul(grad[:, k:], w[0], out=grad_x[:, :head])
            grad_x[:, head:].zero_()
            for j in range(1, K):
                s = k - j
                if s < T:
                    grad_x[:, :T - s].addcmul_(grad[:, s:], w[j])
        if need_state:  # state row r meets grad[r - j] through tap j
            grad_state = state.new_empty(state.shape)
            lo = min(k, T)
            torch.mul(grad[:, :lo], w[0], out=grad_state[:, :lo])
            grad_state[:, lo:].zero_()
            for j in range(1, K):
                n = min(k - j, T)
                grad_state[:, j:j + n].addcmul_(grad[:, :n], w[j])
        if need_w:
            # one product buffer for every tap: a fresh full-size product per tap costs more in page faults
            # than in arithmetic on the CPU
            product = torch.empty_like(grad)
            rows = []
            for j in range(K):
                lo = min(k - j, T)
                torch.mul(grad[:, :lo], state[:, j:j + lo], out=product[:, :lo])
                torch.mul(grad[:, lo:], x[:, :T - lo], out=product[:, lo:])
                rows.append(product.sum((0, 1)))
            grad_w = torch.stack(rows)
        if need_bias:
            grad_bias = grad.sum((0, 1))
        return grad_x, grad_state, grad_w, grad_bias


class CausalDepthwiseConv(nn.Module):
    """Depthwise 1-D convolution over time that sees only the present and the past (kernel_size - 1 steps).

    forward(x [B, T, C], state [B, kernel-1, C] or None) -> (y [B, T, C], new_state): the state is the last
    kernel-1 inputs, so a sequence split into segments gives the same output as one call."""

    def __init__(self, channels: int, kernel_size: int = 4):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=True)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        k, T = self.kernel_size - 1, x.shape[1]
        if state is None:
            state = x.new_zeros(x.shape[0], k, x.shape[2])
        # y_t = bias + sum_j w_j * [state; x]_{t+j}: the cross-correlation of self.conv written as kernel_size
        # shifted multiply-adds, faster on the CPU than the depthwise conv kernel (mostly in backward).
        # taps as contiguous [K, C] rows: a strided per-channel factor (the weight's [C, K] columns) takes the
        # elementwise kernels off their vectorised path, several times slower on the CPU
        w = self.conv.weight[:, 0, :].t().contiguous()
        if torch.compiler.is_compiling():
            # under torch.compile the same sum as traced ops, which inductor fuses into one loop; dynamo cannot
            # trace _CausalTaps (its out= writes into slices) and would break the graph at every conv
            p = torch.cat([state, x], dim=1)
            y = self.conv.bias + sum(w[j] * p[:, j:j + T] for j in range(self.kernel_size))
        else:
            y = _CausalTaps.apply(x, state, w, self.conv.bias)
        return y, x[:, T - k:] if T >= k else torch.cat([state[:, T:], x], dim=1)
