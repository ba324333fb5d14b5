"""One torch.optim.Optimizer made of several (e.g. Muon for hidden matrices + AdamW for the rest).

LR schedulers accept only Optimizer instances and read/write `param_groups`, so the composite exposes the inner
optimizers' group dicts themselves: the runner's LambdaLR scaling group["lr"] scales the inner optimizers directly.
state_dict() nests the inner state dicts by name; load_state_dict() restores them and re-links the groups (torch
replaces the group dicts on load).
"""

from __future__ import annotations

import torch


class CompositeOptimizer(torch.optim.Optimizer):
    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = {name: opt for name, opt in optimizers.items() if opt is not None}
        params = [p for opt in self.optimizers.values() for g in opt.param_groups for p in g["params"]]
        super().__init__([{"params": params}], defaults={})
        self._link_groups()

    def _link_groups(self) -> None:
        self.param_groups = [g for opt in self.optimizers.values() for g in opt.param_groups]

    @property
    def state(self):
        merged = {}
        for opt in getattr(self, "optimizers", {}).values():
            merged.update(opt.state)
        return merged

    @state.setter
    def state(self, value):  # Optimizer.__init__ assigns an empty state; the inner optimizers own the real one
        pass

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != set(self.optimizers):
            raise ValueError(f"state dict holds optimizers {sorted(state_dict)}, expected {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state_dict[name])
        self._link_groups()
