"""TRM x Titans-MAG: a Titans-MAG backbone whose features feed a TRM recursive-reasoning loop (`../shared/seeds/004`).

Papers: Titans, Behrouz et al. 2025 (arXiv 2501.00663), section 4.2 "Memory as a Gate" (MAG, eqs. 26-28);
TRM, Jolicoeur-Martineau 2025, "Less is More: Recursive Reasoning with Tiny Networks" (arXiv 2510.04871);
ACT, Graves 2016 (arXiv 1603.08983).

Backbone, `n_layers` MAG blocks (pre-norm, h = RMSNorm(x)):
    y   = SWA(h)                         sliding-window attention with RoPE + persistent tokens (Titans eq. 27)
    m_t = a * m_{t-1} + (1 - a) * W_down h_t,   M_t = W_up m_t
                                         long-term memory: exponential decay, a in (0,1) learned per channel,
                                         factorised d -> d/2 -> d; computed for all t at once by a parallel scan
    g   = sigmoid(MLP([y, M]))           learned per-channel gate: the seed's form of Titans' gating o = y (x) M(x)
    x  += g * y + (1 - g) * M;   x += SwiGLU(RMSNorm(x))
The seed walks m_t one step at a time and detaches it every step, which cuts all gradient through time; here
gradients flow through the whole scan within a sequence and only the streaming state crossing segments is detached.
Gate entropy term (keeps g off saturation): mean over tokens, channels and layers of ln 2 - H(g) >= 0.

TRM loop on the backbone features F (one tiny network, shared across all steps, as TRM does):
    z_0 = W_z F,  y_0 = W_y z_0
    for i in 1..n_iterations:                       (3)
        repeat n_micro_steps times:                 (2)
            z <- z + CrossAttn(RMSNorm(z + y), F);  z <- z + SwiGLU(RMSNorm(z))      refine the latent
        y_i = y + SwiGLU_u(RMSNorm(y + z))          update the answer
        y, z <- detach(y_i), detach(z)              no gradient between iterations (TRM deep supervision)
    logits = LM_head(RMSNorm(y_n))
The cross-attention is causal and windowed: position t attends F at positions t-w+1..t (w = the backbone window),
so causality holds and the streaming state stays bounded. F itself is not detached (the seed detaches it after the
first iteration; that would leave the backbone without any gradient from the final answer).

Auxiliary terms. ACT halting head q_i = sigmoid(w . z_i), trained as TRM's Q-head with a binary cross-entropy
towards "the answer at step i is already right": with targets (`training_loss`), right = argmax logits_i == target;
without targets (`forward`), right = argmax logits_i == argmax of the final logits (refining further would not change
the prediction). The head is trained but never stops the loop early: every position always runs all iterations.
    aux_loss = gate_entropy_weight * gate term + act_weight * halting BCE
Deep supervision (TRM): `training_loss(inputs, targets)` returns (sum_i w_i CE(LM_head(y_i)) / sum_i w_i, aux) over
y_0..y_n with weights `supervision_weights`; the runner uses it in place of CE(forward(...)) when a model defines it.

Streaming ("state"): per block the SWA key/value window and the last memory vector m_T, plus the cross-attention
key/value window over F; a stream scored in segments gives the same logits as one call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.adapter import LMAdapter, apply_overrides, flavor
from harness.errors import HarnessError
from models.common import (RMSNorm, RotaryEmbedding, SlidingWindowAttention, SwiGLU, apply_rotary, linear_scan,
                           sliding_window_attention)


@dataclass(frozen=True)
class TRMTitansMAGConfig:
    vocab_size: int = 256  # set from the task
    d_model: int = 128  # model width (backbone and TRM states)
    n_layers: int = 3  # MAG blocks in the backbone
    n_heads: int = 4  # attention heads, backbone and TRM cross-attention (head dim = d_model / n_heads)
    window: int = 64  # sliding-window length of the backbone attention and of the TRM cross-attention
    n_persistent: int = 4  # learnable persistent tokens every backbone attention sees (Titans section 4.1)
    memory_dim: int = 0  # width of the decaying long-term memory; 0 means d_model // 2 (the seed's factorisation)
    gate_hidden: int = 0  # hidden width of the MAG gate MLP; 0 means d_model // 2
    n_iterations: int = 3  # TRM outer iterations (answer updates y_1..y_n)
    n_micro_steps: int = 2  # latent refinement steps per iteration
    act_weight: float = 0.1  # weight of the ACT halting BCE in aux_loss
    gate_entropy_weight: float = 0.01  # weight of the gate entropy term (ln 2 - H(g)) in aux_loss
    supervision_weights: tuple = (0.33, 0.5, 0.75, 1.0)  # deep-supervision CE weights of y_0..y_n (seed 004)
    tie_embeddings: bool = True  # LM head shares the token embedding matrix


# Matched to Transformer++ at vocab 256 (tiny ~1.12M, small ~50.7M, medium ~370M, large ~756M total parameters).
FLAVORS = {
    "tiny": TRMTitansMAGConfig(d_model=128, n_layers=3, n_heads=4, window=64, n_persistent=4),  # 1.13M
    "small": TRMTitansMAGConfig(d_model=512, n_layers=12, n_heads=8, window=256, n_persistent=8),  # 51.8M
    "medium": TRMTitansMAGConfig(d_model=1024, n_layers=23, n_heads=16, window=512, n_persistent=16),  # 375M
    "large": TRMTitansMAGConfig(d_model=1536, n_layers=21, n_heads=16, window=512, n_persistent=16),  # 771M
}


# ---- math op: the decaying memory, parallel and naive --------------------------------------------------------

def decaying_memory(x: torch.Tensor, decay: torch.Tensor, m0: torch.Tensor | None = None) -> torch.Tensor:
    """All m_t = decay * m_{t-1} + (1 - decay) * x_t for x [B, T, C], decay [C] in (0,1), m0 [B, C] or None (zeros).
    A parallel (Hillis-Steele) scan: no loop over t, and the result is differentiable in every x_s, s <= t."""
    return linear_scan(decay.expand_as(x), (1 - decay) * x, m0, dim=1)


def decaying_memory_naive(x: torch.Tensor, decay: torch.Tensor, m0: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: the recurrence one time step at a time (without the seed's per-step detach)."""
    m = torch.zeros_like(x[:, 0]) if m0 is None else m0
    out = []
    for t in range(x.shape[1]):
        m = decay * m + (1 - decay) * x[:, t]
        out.append(m)
    return torch.stack(out, dim=1)


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Losses are computed in float32 (or float64 when the model runs in float64)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def binary_entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H(sigmoid(s)) in nats, computed stably: g * softplus(-s) + (1 - g) * softplus(s)."""
    g = torch.sigmoid(logits)
    return g * F.softplus(-logits) + (1 - g) * F.softplus(logits)


# ---- layers --------------------------------------------------------------------------------------------------

class LongTermMemory(nn.Module):
    """Exponentially decaying memory in a compressed space: M = W_up scan(W_down h). State: the last m [B, C]."""

    def __init__(self, dim: int, memory_dim: int):
        super().__init__()
        self.down = nn.Linear(dim, memory_dim, bias=False)
        self.up = nn.Linear(memory_dim, dim, bias=False)
        # Decays start spread over time scales 1/(1-a) from 2 to 512 tokens; sigmoid keeps them in (0, 1).
        timescale = torch.logspace(math.log10(2.0), math.log10(512.0), memory_dim)
        self.decay_logit = nn.Parameter(torch.logit(1 - 1 / timescale))

    def forward(self, h: torch.Tensor, m0: torch.Tensor | None):
        # The scan runs in float32 even under bf16: a decay like 0.998 is 1.0 in bfloat16, which would freeze m.
        compressed = _at_least_fp32(self.down(h))
        m = decaying_memory(compressed, torch.sigmoid(self.decay_logit).to(compressed.dtype), m0)
        return self.up(m.to(h.dtype)), m[:, -1]


class MAGGate(nn.Module):
    """g = sigmoid(MLP([y, m])) per channel; returns g*y + (1-g)*m and the mean of ln 2 - H(g) (>= 0)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, y: torch.Tensor, m: torch.Tensor):
        logits = self.mlp(torch.cat([y, m], dim=-1))
        g = torch.sigmoid(logits)
        entropy = binary_entropy_from_logits(_at_least_fp32(logits))
        return g * y + (1 - g) * m, (math.log(2.0) - entropy).mean()


class MAGBlock(nn.Module):
    """One Titans-MAG block: windowed attention and the decaying memory in parallel, blended by the gate."""

    def __init__(self, c: TRMTitansMAGConfig):
        super().__init__()
        self.norm = RMSNorm(c.d_model)
        self.attn = SlidingWindowAttention(c.d_model, c.n_heads, c.window, c.n_persistent)
        self.memory = LongTermMemory(c.d_model, c.memory_dim or c.d_model // 2)
        self.gate = MAGGate(c.d_model, c.gate_hidden or c.d_model // 2)
        self.mlp_norm = RMSNorm(c.d_model)
        self.mlp = SwiGLU(c.d_model)

    def forward(self, x: torch.Tensor, state: dict | None):
        h = self.norm(x)
        y, attn_state = self.attn(h, None if state is None else state["attn"])
        m, memory_last = self.memory(h, None if state is None else state["memory"])
        mixed, gate_term = self.gate(y, m)
        x = x + mixed
        x = x + self.mlp(self.mlp_norm(x))
        return x, gate_term, {"attn": attn_state, "memory": memory_last.detach()}


class CausalCrossAttention(nn.Module):
    """Queries from the TRM state, keys/values from the backbone features; query t sees features t-w+1..t (RoPE on
    both, same positions). `context` projects the features once per call (prepending the streamed window) so the
    six refinement steps reuse them."""

    def __init__(self, dim: int, n_heads: int, window: int):
        super().__init__()
        self.n_heads, self.head_dim, self.window = n_heads, dim // n_heads, window
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim)

    def context(self, features: torch.Tensor, state: dict | None):
        B, T, _ = features.shape
        k, v = self.kv(features).view(B, T, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        start = 0 if state is None else state["pos"]
        cos, sin = self.rotary(torch.arange(start, start + T, device=features.device))
        k = apply_rotary(k, cos, sin)
        if state is not None:
            k, v = torch.cat([state["k"], k], dim=2), torch.cat([state["v"], v], dim=2)
        cut = max(k.shape[2] - (self.window - 1), 0)  # keep the last window-1 keys (all, if fewer so far)
        new_state = {"k": k[:, :, cut:].detach(), "v": v[:, :, cut:].detach(), "pos": start + T}
        return (k, v, cos, sin), new_state

    def forward(self, x: torch.Tensor, context) -> torch.Tensor:
        k, v, cos, sin = context
        B, T, d = x.shape
        q = apply_rotary(self.q(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2), cos, sin)
        y = sliding_window_attention(q, k, v, self.window)
        return self.out(y.transpose(1, 2).reshape(B, T, d))


class RecursiveReasoner(nn.Module):
    """The TRM loop. forward(features, state) -> (answers [y_0..y_n], latents [z_0..z_n], new cross-attn state)."""

    def __init__(self, c: TRMTitansMAGConfig):
        super().__init__()
        self.n_iterations, self.n_micro_steps = c.n_iterations, c.n_micro_steps
        self.z0 = nn.Linear(c.d_model, c.d_model, bias=False)
        self.y0 = nn.Linear(c.d_model, c.d_model, bias=False)
        self.cross_norm = RMSNorm(c.d_model)
        self.cross = CausalCrossAttention(c.d_model, c.n_heads, c.window)
        self.refine_norm = RMSNorm(c.d_model)
        self.refine_mlp = SwiGLU(c.d_model)
        self.update_norm = RMSNorm(c.d_model)
        self.update_mlp = SwiGLU(c.d_model)

    def refine(self, z, y, context):
        z = z + self.cross(self.cross_norm(z + y), context)
        return z + self.refine_mlp(self.refine_norm(z))

    def forward(self, features: torch.Tensor, state: dict | None):
        context, new_state = self.cross.context(features, state)
        z = self.z0(features)
        y = self.y0(z)
        answers, latents = [y], [z]
        for i in range(self.n_iterations):
            for _ in range(self.n_micro_steps):
                z = self.refine(z, y, context)
            y = y + self.update_mlp(self.update_norm(y + z))
            answers.append(y)
            latents.append(z)
            y, z = y.detach(), z.detach()  # TRM deep supervision: each iteration starts from detached states
        return answers, latents, new_state


# ---- the model -----------------------------------------------------------------------------------------------

class TRMTitansMAG(LMAdapter):
    streaming = "state"

    def __init__(self, config: TRMTitansMAGConfig):
        super().__init__(config)
        c = config
        if c.d_model % c.n_heads:
            raise HarnessError(f"trm-titans-mag d_model={c.d_model} must be divisible by n_heads={c.n_heads}")
        if c.window < 2 or c.n_iterations < 1 or c.n_micro_steps < 1:
            raise HarnessError("trm-titans-mag needs window >= 2, n_iterations >= 1 and n_micro_steps >= 1; got "
                               f"{c.window}, {c.n_iterations}, {c.n_micro_steps}")
        if len(c.supervision_weights) != c.n_iterations + 1:
            raise HarnessError(f"trm-titans-mag supervision_weights needs n_iterations + 1 = {c.n_iterations + 1} "
                               f"values (y_0..y_n), got {len(c.supervision_weights)}")
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        nn.init.normal_(self.embed.weight, std=c.d_model ** -0.5)
        self.blocks = nn.ModuleList(MAGBlock(c) for _ in range(c.n_layers))
        self.feature_norm = RMSNorm(c.d_model)
        self.reasoner = RecursiveReasoner(c)
        self.halt = nn.Linear(c.d_model, 1)  # ACT / TRM Q-head on the latent z_i
        self.norm = RMSNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def _run(self, input_ids: torch.Tensor, state: dict | None):
        """Backbone + TRM loop -> (answers, latents, gate term, new state)."""
        x = self.embed(input_ids)
        block_states, gate_terms = [], []
        for i, block in enumerate(self.blocks):
            x, gate_term, block_state = block(x, None if state is None else state["blocks"][i])
            block_states.append(block_state)
            gate_terms.append(gate_term)
        answers, latents, cross_state = self.reasoner(self.feature_norm(x), None if state is None else state["cross"])
        return answers, latents, torch.stack(gate_terms).mean(), {"blocks": block_states, "cross": cross_state}

    def _halting_loss(self, latents, predictions, right_answer, valid=None):
        """BCE of the halting head q_i = sigmoid(w . z_i) towards 'step i's prediction equals right_answer'."""
        losses = []
        for z, predicted in zip(latents, predictions):
            correct = (predicted == right_answer).to(z.dtype)
            bce = F.binary_cross_entropy_with_logits(self.halt(z).squeeze(-1), correct, reduction="none")
            losses.append(bce.mean() if valid is None else bce[valid].mean())
        return torch.stack(losses).mean()

    def forward_with_state(self, input_ids, state):
        answers, latents, gate_term, new_state = self._run(input_ids, state)
        logits = self.lm_head(self.norm(answers[-1]))
        with torch.no_grad():  # the intermediate answers only give the halting targets: no graph, one at a time
            predictions = [self.lm_head(self.norm(y)).argmax(dim=-1) for y in answers[:-1]]
        final = logits.argmax(dim=-1)
        halting = self._halting_loss(latents, predictions + [final], final)
        aux = self.config.gate_entropy_weight * gate_term + self.config.act_weight * halting
        return logits, aux, new_state

    def training_loss(self, input_ids: torch.Tensor, targets: torch.Tensor):
        """(deep-supervision loss, aux): weighted mean of CE(LM_head(y_i), targets) over y_0..y_n (targets -100 are
        ignored), and aux = gate term + ACT halting BCE towards 'step i predicts the target'."""
        answers, latents, gate_term, _ = self._run(input_ids, None)
        step_logits = [self.lm_head(self.norm(y)) for y in answers]
        weights = self.config.supervision_weights
        ce = [F.cross_entropy(_at_least_fp32(l).flatten(0, 1), targets.flatten(), ignore_index=-100)
              for l in step_logits]
        loss = sum(w * c for w, c in zip(weights, ce)) / sum(weights)
        valid = targets != -100
        halting = self._halting_loss(latents, [l.argmax(dim=-1) for l in step_logits], targets, valid)
        aux = self.config.gate_entropy_weight * gate_term + self.config.act_weight * halting
        return loss, aux


def build(preset: str = "tiny", vocab_size: int = 256, overrides: dict | None = None) -> TRMTitansMAG:
    config = apply_overrides(flavor(FLAVORS, preset, "trm-titans-mag"), {"vocab_size": vocab_size, **(overrides or {})})
    return TRMTitansMAG(config)
