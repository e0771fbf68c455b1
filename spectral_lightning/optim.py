"""AdamW parameter groups by role and the warm-up + cosine schedule of every run.

Plain functions of a model and numbers (no Lightning): ``SpectralLM`` calls them from ``configure_optimizers``
and keeps its ``parameter_groups`` / ``lr_floors`` / ``lr_factor`` methods as the public entry points.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn

from spectral_lightning.convert import is_dense_linear
from spectral_lightning.parameterizations import ParameterizedLinear


def parameter_groups(
    model: nn.Module,
    parameterized: set[str],
    *,
    lr: float,
    weight_decay: float,
    lr_scale: float = 1.0,
    own_weight_decay: float | None = None,
    own_min_lr: float | None = None,
) -> list[dict[str, Any]]:
    """AdamW groups by role.

    Decayed: every linear's weight-defining Parameters (dense weights, DCT coefficients, low-rank factors). For
    DCT, decay on X equals decay on W (Parseval); for low-rank, decaying B and A is a nuclear-norm-like penalty on
    W (see ``parameterizations/lowrank.py``). Not decayed: biases, norm gains and the token/position embeddings
    (decaying lookup tables only shrinks rare rows). A ``transformers`` model's linears left unparameterized
    (``nn.Linear``, ``Conv1D``) decay their weights too; a weight tied to an embedding is decayed once, as a
    linear's.

    With ``lr_scale`` ≠ 1, an ``own_weight_decay`` or an ``own_min_lr`` the decayed Parameters of the linears
    named in ``parameterized`` move to a third group with their own ``lr``, decay and, when set, ``min_lr`` (the
    floor of its schedule, :func:`lr_floors`); otherwise there are two groups, as in checkpoints written before.
    """
    separate = lr_scale != 1.0 or own_weight_decay is not None or own_min_lr is not None
    owned: dict[int, tuple[nn.Parameter, bool]] = {}  # in module order (the optimizer state's order)
    for name, m in model.named_modules():
        if isinstance(m, ParameterizedLinear):
            own_group = separate and name in parameterized
            owned.update({id(p): (p, own_group) for p in m.weight_parameters()})
        elif is_dense_linear(m):
            owned.setdefault(id(m.weight), (m.weight, False))
    decay = [p for p, own_group in owned.values() if not own_group]
    scaled = [p for p, own_group in owned.values() if own_group]
    no_decay = [p for p in model.parameters() if id(p) not in owned]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if scaled:
        decay_rate = weight_decay if own_weight_decay is None else own_weight_decay
        groups.append({"params": scaled, "weight_decay": decay_rate, "lr": lr * lr_scale})
        if own_min_lr is not None:
            groups[-1]["min_lr"] = own_min_lr
    return groups


def lr_floors(groups: list[dict[str, Any]], lr: float, min_lr: float) -> list[float]:
    """The floor of each group as a fraction of its peak rate: its own ``min_lr / lr`` where the group sets one,
    else ``min_lr / lr``."""
    return [g["min_lr"] / g["lr"] if "min_lr" in g else min_lr / lr for g in groups]


def lr_factor(step: int, total_steps: int, warmup_steps: int, floor: float) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine decay to ``floor`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, floors: list[float]
) -> torch.optim.lr_scheduler.LambdaLR:
    """A step-wise ``LambdaLR`` of :func:`lr_factor` for each group, on that group's floor (a ``partial`` holds no
    state of its own, so checkpoints written with one shared function load into it and back)."""
    factor = functools.partial(lr_factor, total_steps=total_steps, warmup_steps=warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [functools.partial(factor, floor=f) for f in floors])


def reapply_schedules(schedules: list[Any]) -> None:
    """Set every group's rate from its schedule at the schedule's restored step.

    A resumed run restores the optimizer's last rate, computed for the ``max_steps`` of the run that saved it;
    re-evaluating the schedule with this run's ``max_steps`` makes a run resumed with a larger ``max_steps``
    follow its new schedule from its first step (for an unchanged ``max_steps`` this sets the same value). The
    scheduler's own record of its last rate is refreshed by its next ``step()``.
    """
    for schedule in schedules:
        if isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):
            groups = schedule.optimizer.param_groups
            for group, base, factor in zip(groups, schedule.base_lrs, schedule.lr_lambdas, strict=True):
                group["lr"] = base * factor(schedule.last_epoch)
