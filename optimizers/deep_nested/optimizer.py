"""DeepNestedOptimizer: AdamW-like inner optimizer whose momentum and per-group learning rates are learned.

Pieces (seed 000/002's TitanMAC optimizer, after Nested Learning, Behrouz et al. 2025):
  - learned momentum over a continuum memory system (networks.LearnedMomentum, inner.py);
  - an LR controller giving each parameter group a multiplier from its gradient statistics (networks.LRController);
  - meta-learning of both (meta.py): mode "explicit" = k-step unrolled validation loss, called by the runner
    through meta_update(val_batch, train_batches) at evaluation steps; mode "simple" = every meta_every steps,
    the one-step hypergradient of the training loss.
Groups: "core" = hidden 2-D matrices (weight decay), "embed" = everything else (embeddings, output head, norms,
biases, router; no weight decay), from optimizers.param_groups. Both start at the group's peak lr, which the
runner's schedule scales. NaN guards: a step whose gradients or computed update are not finite is skipped (weights
and state untouched), a non-finite controller output falls back to multiplier 1, a non-finite meta-gradient skips
the meta step; report() counts each.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import HarnessError
from optimizers.deep_nested.inner import advance_state, apply_update, init_state
from optimizers.deep_nested.meta import hypergradient_surrogate, unrolled_validation_loss
from optimizers.deep_nested.networks import LearnedMomentum, LRController, group_stats


class DeepNestedOptimizer(torch.optim.Optimizer):
    def __init__(self, model: nn.Module, groups: list[dict], loss_fn=None, mode: str = "explicit",
                 betas=(0.9, 0.95), eps: float = 1e-8, cms_frequencies=(1, 10, 100), momentum_hidden: int = 16,
                 controller_hidden: int = 32, max_lr_mult: float = 4.0, meta_lr: float = 1e-3,
                 meta_every: int = 50, k_unroll: int = 3, meta_order: int = 1, grad_clip: float = 1.0,
                 meta_grad_clip: float = 1.0):
        super().__init__(groups, dict(lr=1e-3, weight_decay=0.0, betas=tuple(betas), eps=eps))
        self.model, self.loss_fn, self.mode = model, loss_fn, mode
        self.freqs = tuple(int(f) for f in cms_frequencies)
        self.meta_every, self.k_unroll, self.meta_order = meta_every, k_unroll, meta_order
        self.grad_clip, self.meta_grad_clip = grad_clip, meta_grad_clip
        self._names = {id(p): n for n, p in model.named_parameters()}
        device = next(model.parameters()).device
        self.momentum_net = LearnedMomentum(len(self.freqs), momentum_hidden).to(device)
        self.controller = LRController(len(self.param_groups), controller_hidden, max_lr_mult).to(device)
        self.meta_optimizer = torch.optim.Adam(self.meta_parameters(), lr=meta_lr)
        n = len(self.param_groups)
        self.global_step, self.last_loss = 0, None
        self.update_ratio, self.lr_mults = torch.zeros(n, device=device), torch.ones(n, device=device)
        self.counters = {"skipped_nonfinite_grad": 0, "skipped_nonfinite_update": 0, "controller_fallbacks": 0,
                         "meta_updates": 0, "skipped_meta_updates": 0, "meta_updates_on_val_batch_only": 0}
        self.meta_losses: list[tuple[int, float]] = []  # (step, meta loss)
        self.mult_history: list[tuple[int, list[float]]] = []  # (step, per-group multipliers) at meta updates
        self._pending = None  # simple mode: the recorded step whose hypergradient the next step computes

    # -- bookkeeping shared with meta.py ----------------------------------------------------------------------
    def meta_parameters(self) -> list[nn.Parameter]:
        return list(self.momentum_net.parameters()) + list(self.controller.parameters())

    def entries(self) -> list[tuple[int, str, torch.Tensor]]:
        """(group index, parameter name in the model, parameter) for every optimised parameter."""
        return [(gi, self._names[id(p)], p) for gi, g in enumerate(self.param_groups) for p in g["params"]]

    def group_stats(self, group_ids, grads, params, update_ratio, loss) -> torch.Tensor:
        n = len(self.param_groups)
        grad_norm = _group_sums(group_ids, [g * g for g in grads], n).sqrt()
        param_norm = _group_sums(group_ids, [p * p for p in params], n).sqrt()
        return group_stats(grad_norm, param_norm, update_ratio.to(grad_norm.dtype), loss)

    def update_ratios(self, group_ids, old, new, previous) -> torch.Tensor:
        """Per group ||new - old|| / ||old||; groups without entries keep their previous ratio."""
        n = len(self.param_groups)
        delta = _group_sums(group_ids, [(b - a) ** 2 for a, b in zip(old, new)], n).sqrt()
        norm = _group_sums(group_ids, [a * a for a in old], n).sqrt()
        seen = torch.zeros(n, dtype=torch.bool, device=previous.device)
        seen[list(set(group_ids))] = True
        return torch.where(seen, delta / (norm + 1e-12), previous.to(delta.dtype))

    # -- the runner's hooks -----------------------------------------------------------------------------------
    def observe_loss(self, value: float) -> None:
        self.last_loss = float(value)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            self.observe_loss(loss)
        live = [(gi, p) for gi, g in enumerate(self.param_groups) for p in g["params"] if p.grad is not None]
        if not live:
            return loss
        grads = [p.grad for _, p in live]
        if not bool(torch.isfinite(torch.stack([torch.linalg.vector_norm(g) for g in grads])).all()):
            self.counters["skipped_nonfinite_grad"] += 1
            return loss
        if self.mode == "simple" and self._pending is not None:
            self._simple_meta_step({id(p): g for (_, p), g in zip(live, grads)})
        step = self.global_step + 1
        group_ids, params = [gi for gi, _ in live], [p for _, p in live]
        stats = self.group_stats(group_ids, grads, params, self.update_ratio, self.last_loss)
        mults = self.controller(stats)
        if not bool(torch.isfinite(mults).all()):
            self.counters["controller_fallbacks"] += 1
            mults = torch.ones_like(mults)
        record = self.mode == "simple" and step % self.meta_every == 0
        new_params, new_states, features = [], [], []
        for (gi, p), g in zip(live, grads):
            group = self.param_groups[gi]
            f, state = advance_state(g, self.state[p] or init_state(p, self.freqs), step, group["betas"],
                                     group["eps"], self.freqs)
            new_params.append(apply_update(p, self.momentum_net(f), group["lr"], mults[gi], group["weight_decay"]))
            new_states.append(state)
            if record:
                features.append(f)
        if not bool(torch.stack([torch.isfinite(x).all() for x in new_params]).all()):
            self.counters["skipped_nonfinite_update"] += 1
            return loss
        self.update_ratio = self.update_ratios(group_ids, params, new_params, self.update_ratio)
        for p, new, state in zip(params, new_params, new_states):
            p.copy_(new)
            self.state[p] = state
        self.global_step, self.lr_mults = step, mults
        if record:
            self._pending = {"groups": group_ids, "params": params, "features": features, "stats": stats}
        return loss

    def _finish_meta_step(self, meta_loss: float) -> bool:
        params = self.meta_parameters()
        grads = [p.grad for p in params if p.grad is not None]
        finite = bool(torch.isfinite(torch.tensor(meta_loss))) and all(bool(torch.isfinite(g).all()) for g in grads)
        if finite and grads:
            torch.nn.utils.clip_grad_norm_(params, self.meta_grad_clip)
            self.meta_optimizer.step()
            self.counters["meta_updates"] += 1
            self.meta_losses.append((self.global_step, meta_loss))
            self.mult_history.append((self.global_step, [round(float(m), 6) for m in self.lr_mults]))
        else:
            self.counters["skipped_meta_updates"] += 1
        self.meta_optimizer.zero_grad(set_to_none=True)
        return finite and bool(grads)

    def _simple_meta_step(self, grads_by_id: dict) -> None:
        pending, self._pending = self._pending, None
        self.meta_optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            predicted_change = hypergradient_surrogate(self, pending, grads_by_id)
        self._finish_meta_step(predicted_change)

    def meta_update(self, val_batch, train_batches=None, use_unrolled: bool = True) -> float | None:
        """Explicit mode: one meta step on L_val after k unrolled inner steps on the most recent train batches
        (k = k_unroll, or 1 if use_unrolled is False). The model's weights and the optimizer's state are left
        exactly as they were. Returns the meta loss (None if the step was skipped)."""
        if self.loss_fn is None:
            raise HarnessError("deep-nested meta_update needs the runner's loss_fn(model, inputs, targets)")
        batches = list(train_batches or [])[-(self.k_unroll if use_unrolled else 1):]
        if not batches:  # nothing to unroll on: one inner step on the validation batch itself
            batches = [val_batch]
            self.counters["meta_updates_on_val_batch_only"] += 1
        device = self.update_ratio.device
        with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(
                devices=[device] if device.type == "cuda" else []):
            batches = [tuple(t.clone().to(device) for t in b) for b in batches]
            val = tuple(t.clone().to(device) for t in val_batch)
            buffers = {n: b.clone() for n, b in self.model.named_buffers()}
            self.meta_optimizer.zero_grad(set_to_none=True)
            loss = unrolled_validation_loss(self, batches, val, second_order=self.meta_order == 2)
            if torch.isfinite(loss):
                grads = torch.autograd.grad(loss, self.meta_parameters(), allow_unused=True)
                for p, g in zip(self.meta_parameters(), grads):
                    p.grad = g
            with torch.no_grad():
                for n, b in self.model.named_buffers():
                    b.copy_(buffers[n])
        value = float(loss.detach())
        return value if self._finish_meta_step(value) else None

    def report(self) -> dict:
        names = [g.get("name", str(i)) for i, g in enumerate(self.param_groups)]
        return {"mode": self.mode, "steps": self.global_step, **self.counters,
                "lr_multipliers_last": dict(zip(names, [round(float(m), 6) for m in self.lr_mults])),
                "lr_multiplier_history": [(s, dict(zip(names, m))) for s, m in self.mult_history],
                "meta_losses": self.meta_losses, "cms_frequencies": list(self.freqs), "k_unroll": self.k_unroll,
                "level_mix": [round(float(w), 6) for w in self.momentum_net.level_mix.detach()]}

    # -- checkpoints ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        sd = super().state_dict()
        index = {id(p): i for i, (_, _, p) in enumerate(self.entries())}
        pending = None if self._pending is None else {
            "groups": self._pending["groups"], "index": [index[id(p)] for p in self._pending["params"]],
            "features": [f.clone() for f in self._pending["features"]], "stats": self._pending["stats"].clone()}
        sd["deep_nested"] = {
            "momentum_net": self.momentum_net.state_dict(), "controller": self.controller.state_dict(),
            "meta_optimizer": self.meta_optimizer.state_dict(), "global_step": self.global_step,
            "last_loss": self.last_loss, "update_ratio": self.update_ratio.clone(), "lr_mults": self.lr_mults.clone(),
            "counters": dict(self.counters), "meta_losses": list(self.meta_losses),
            "mult_history": list(self.mult_history), "pending": pending}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("deep_nested")
        super().load_state_dict(state_dict)
        self.momentum_net.load_state_dict(extra["momentum_net"])
        self.controller.load_state_dict(extra["controller"])
        self.meta_optimizer.load_state_dict(extra["meta_optimizer"])
        device = self.update_ratio.device
        self.global_step, self.last_loss = extra["global_step"], extra["last_loss"]
        self.update_ratio, self.lr_mults = extra["update_ratio"].to(device), extra["lr_mults"].to(device)
        self.counters.update(extra["counters"])
        self.meta_losses, self.mult_history = list(extra["meta_losses"]), list(extra["mult_history"])
        pending, self._pending = extra["pending"], None
        if pending is not None:
            params = [p for _, _, p in self.entries()]
            self._pending = {"groups": pending["groups"], "params": [params[i] for i in pending["index"]],
                             "features": [f.to(device) for f in pending["features"]],
                             "stats": pending["stats"].to(device)}


def _group_sums(group_ids, tensors, n_groups) -> torch.Tensor:
    """[n_groups] sums of the tensors' elements by group, in at least float32 (float64 stays float64)."""
    sums = [None] * n_groups
    for gi, t in zip(group_ids, tensors):
        total = t.sum(dtype=torch.promote_types(t.dtype, torch.float32))
        sums[gi] = total if sums[gi] is None else sums[gi] + total
    template = next(x for x in sums if x is not None)
    return torch.stack([x if x is not None else torch.zeros_like(template) for x in sums])
