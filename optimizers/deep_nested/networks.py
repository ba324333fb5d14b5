"""The two learned pieces of the DeepNestedOptimizer, both initialised so that the optimizer starts as AdamW.

LearnedMomentum (deep momentum, Nested Learning eq. for DMGD): maps per-element gradient features
    x = [g / d, m_fast / d, m_medium / d, m_slow / d]      (d = sqrt(v_hat) + eps; m_l = the CMS level memories)
to the update direction  u = sum_l w_l x_{1+l} + tanh(MLP(x)),  with w = (1, 0, 0) and the MLP's last layer zero
at init, so u starts as Adam's m_hat / (sqrt(v_hat) + eps). Applied elementwise (one tiny MLP for all elements).

LRController: maps each group's statistics [log grad norm, log param norm, log last update/param ratio, log loss]
plus a one-hot group id to a learning-rate multiplier max_mult ** tanh(out) in [1/max_mult, max_mult] (1 at init).
"""

from __future__ import annotations

import torch
from torch import nn


class LearnedMomentum(nn.Module):
    def __init__(self, n_levels: int = 3, hidden: int = 16):
        super().__init__()
        self.level_mix = nn.Parameter(torch.tensor([1.0] + [0.0] * (n_levels - 1)))  # linear readout of levels
        self.mlp = nn.Sequential(nn.Linear(1 + n_levels, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [..., 1 + n_levels] -> update direction [...]."""
        x = features.to(self.level_mix.dtype)
        u = (x[..., 1:] * self.level_mix).sum(-1) + torch.tanh(self.mlp(x).squeeze(-1))
        return u.to(features.dtype)


class LRController(nn.Module):
    N_STATS = 4

    def __init__(self, n_groups: int, hidden: int = 32, max_mult: float = 4.0):
        super().__init__()
        self.n_groups, self.max_mult = n_groups, max_mult
        self.mlp = nn.Sequential(nn.Linear(self.N_STATS + n_groups, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        """stats [n_groups, N_STATS] -> multipliers [n_groups]."""
        dtype = self.mlp[0].weight.dtype
        x = torch.cat([stats.to(dtype), torch.eye(self.n_groups, device=stats.device, dtype=dtype)], dim=1)
        return self.max_mult ** torch.tanh(self.mlp(x).squeeze(-1))


def group_stats(grad_norm: torch.Tensor, param_norm: torch.Tensor, update_ratio: torch.Tensor,
                loss) -> torch.Tensor:
    """[n_groups] norms -> [n_groups, 4] controller inputs (logs, so scale-free). `loss`: a float, a scalar
    tensor (differentiable in the unroll) or None (unknown: 0)."""
    if loss is None:
        log_loss = torch.zeros_like(grad_norm)
    else:
        loss = torch.as_tensor(loss, dtype=grad_norm.dtype, device=grad_norm.device)
        log_loss = loss.clamp_min(1e-8).log().expand_as(grad_norm)
    return torch.stack([(grad_norm + 1e-12).log(), (param_norm + 1e-12).log(), (update_ratio + 1e-12).log(),
                        log_loss], dim=1) / 10.0
