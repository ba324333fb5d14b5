"""Meta-objectives that train the learned momentum and the LR controller.

explicit (`meta_update`): k-step unrolled differentiation (Maclaurin et al. 2015; Andrychowicz et al. 2016).
From the current weights theta_0, take k inner steps on recent training batches with the optimizer's own update
(inner.py), on *copies* of the weights passed through torch.func.functional_call, then score a validation batch:
    meta_loss = L_val(theta_k(phi)),   phi = learned momentum + controller parameters.
meta_order=1 treats each inner gradient as a constant (no Hessian terms; works with fused attention kernels);
meta_order=2 differentiates through the gradients too (double backward). The model's weights are never written.

simple (every `meta_every` steps): the one-step hypergradient of the *training* loss (Baydin et al. 2018,
"Online Learning Rate Adaptation with Hypergradient Descent"): with the update recorded at step r and the fresh
gradient g_{r+1} at step r+1,  d L(theta_{r+1}) / d phi  ~=  < g_{r+1}, d theta_{r+1} / d phi >.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from optimizers.deep_nested.inner import advance_state, apply_update, clip_by_global_norm, init_state


class _LossOf(nn.Module):
    """Lets functional_call swap the model's parameters while the runner's loss_fn(model, x, y) runs."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, inputs, targets):
        return self.loss_fn(self.model, inputs, targets)


def unrolled_validation_loss(opt, train_batches, val_batch, second_order: bool = False) -> torch.Tensor:
    """L_val after len(train_batches) differentiable inner steps from the current weights (see module doc)."""
    entries = opt.entries()
    wrapper = _LossOf(opt.model, opt.loss_fn)

    def loss_at(tensors, batch):
        weights = {"model." + name: t for (_, name, _), t in zip(entries, tensors)}
        return functional_call(wrapper, weights, tuple(batch))

    theta = [p.detach().clone().requires_grad_(second_order) for _, _, p in entries]
    states = [{k: v.detach().clone() for k, v in (opt.state[p] or init_state(p, opt.freqs)).items()}
              for _, _, p in entries]
    ratio = opt.update_ratio.clone()
    for i, batch in enumerate(train_batches):
        step = opt.global_step + 1 + i
        inputs = theta if second_order else [t.detach().requires_grad_() for t in theta]
        loss = loss_at(inputs, batch)
        grads = torch.autograd.grad(loss, inputs, create_graph=second_order, allow_unused=True)
        live = [j for j, g in enumerate(grads) if g is not None]
        clipped = clip_by_global_norm([grads[j] for j in live], opt.grad_clip)
        # Statistics stay differentiable: with meta_order=2 they depend on phi through theta and the gradients.
        stats = opt.group_stats([entries[j][0] for j in live], clipped, [theta[j] for j in live], ratio, loss)
        mults = opt.controller(stats)
        new_theta = list(theta)
        for j, g in zip(live, clipped):
            group = opt.param_groups[entries[j][0]]
            features, states[j] = advance_state(g, states[j], step, group["betas"], group["eps"], opt.freqs)
            direction = opt.momentum_net(features)
            new_theta[j] = apply_update(theta[j], direction, group["lr"], mults[entries[j][0]],
                                        group["weight_decay"])
        ratio = opt.update_ratios([entries[j][0] for j in live], [theta[j] for j in live],
                                  [new_theta[j] for j in live], ratio)
        theta = new_theta
    return loss_at(theta, val_batch)


def hypergradient_surrogate(opt, pending: dict, grads_by_id: dict) -> float:
    """Accumulate d<g_{r+1}, theta_{r+1}(phi)>/d phi into the meta-parameters' .grad; returns the predicted
    first-order change of the training loss caused by step r, sum <g_{r+1}, theta_{r+1} - theta_r>."""
    mults = opt.controller(pending["stats"])
    mult_coef = torch.zeros_like(mults)  # d surrogate / d mult_group, accumulated without a graph
    predicted = 0.0
    for gi, p, features in zip(pending["groups"], pending["params"], pending["features"]):
        g = grads_by_id.get(id(p))
        if g is None:
            continue
        group = opt.param_groups[gi]
        lr, wd = group["lr"], group["weight_decay"]
        direction = opt.momentum_net(features)
        step_vec = direction + wd * p.detach()  # theta_{r+1} - theta_r = -lr c (u + wd theta)
        inner = (g * step_vec).sum()
        (-lr * mults[gi].detach() * inner).backward()  # into the momentum net
        mult_coef[gi] += -lr * inner.detach()
        predicted += float(-lr * mults[gi].detach() * inner.detach())
    (mults * mult_coef).sum().backward()  # into the controller
    return predicted
