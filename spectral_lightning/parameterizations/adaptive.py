"""Supports that move during training: K coefficients whose positions change (dynamic sparsity in coefficient space).

A DCT or random-basis layer built with ``update_every`` (a :class:`SupportSchedule`) keeps a fixed budget of K
coefficients of its m×n coefficient matrix X (W = P_mᵀ X P_n) but not a fixed set of positions. Every
``update_every`` steps, until ``update_until`` of training, the support is updated the way RigL updates a sparse
weight mask:

* **drop** the d stored coefficients of smallest |x|;
* **grow** d positions that were not stored: those of largest |Ĝ| (``grow="gradient"``) or uniformly random ones
  (``grow="random"``, a generator seeded from ``(seed, step, layer index)``). A grown coefficient starts at
  exactly 0 and its optimizer moments (every optimizer state tensor shaped like the coefficients) at 0, so the
  update does not change W; the next optimizer step starts moving it.

Ĝ = P_m (∂L/∂W) P_nᵀ is the gradient of the loss with respect to every entry of X, stored or not (∂L/∂W: the gradient
of the materialized weight of that step). It costs no extra product: on an update step the layer scatters its
coefficients into a zero m×n *probe* tensor that requires grad (the layer's ``arm_gradient_probe()``), so the
backward pass that computes the coefficients' gradients leaves Ĝ in the probe's ``.grad`` (zero at the stored
positions, which are not candidates for growth: a position dropped by an update is not grown back by the same
one). Gradients of every micro-batch of the step add up there, so with gradient accumulation Ĝ is that of the whole
step. Under DDP the caller passes a ``reduce`` that averages Ĝ over the ranks, so every rank takes the same decision
and holds the same support. (Under a GradScaler, fp16, Ĝ carries the loss scale: one factor for every layer, so no
decision changes.)

``grow_window`` w (≥ 1, at most ``update_every``) sums Ĝ over the w steps that end with the update step (the probe
stays armed from step u − w + 1 to u): positions whose gradient points the same way step after step add up, those
whose gradient only flickers cancel, so growth follows the loss's consistent direction rather than one batch's noise
(a momentum of the gradient, as in sparse momentum training). w = 1 (default) is RigL's one-step gradient. Under a
global budget every layer's sum covers the same w steps, so the comparison across layers is unchanged. An armed
window is training state: ``spectral_lightning.support.AdaptiveSupport`` saves its partial sum in checkpoints, so a
run resumed inside a window decides as the uninterrupted one does.

The share dropped follows RigL's cosine decay over the updating period: at step t,
f_t = drop_fraction · (1 + cos(π t / T_end)) / 2 with T_end = update_until · total steps; d = round(f_t · K).

``budget`` decides where K lives:

* ``per_layer``: each layer drops and grows d = round(f_t · K) of its own, so its K never changes;
* ``global``: the D = round(f_t · ΣK) smallest |x| over all moving layers are dropped and D positions are grown at the
  largest |Ĝ| over all of them, so K moves between layers and ΣK stays fixed. The raw magnitudes of different
  layers are compared as they are (RigL's choice: no per-layer normalization). Every layer keeps at least one
  coefficient.
* ``global_relative``: as ``global``, but each layer's magnitudes are divided by that layer's mean first (|x| by the
  mean |x| of its stored coefficients, |Ĝ| by the mean |Ĝ| of its unstored positions), so layers trade by the
  shape of their distributions, not their scale: a layer whose gradients are larger everywhere (the first block's,
  typically) no longer wins every grow, nor does a layer of small coefficients lose every drop.

Positions are kept sorted (ascending flat row-major indices into m×n); ``coef[i]`` is the coefficient at
``positions[i]``. They are a persistent buffer of the layer, so checkpoints, exports and resumed runs restore the
support; the schedule is a pure function of the step, so nothing else needs saving (but an open ``grow_window``'s
partial sums, which the Lightning callback saves).

:func:`update_supports` is the whole update for one step; ``spectral_lightning.support.AdaptiveSupport`` calls it
from Lightning, and a plain training loop calls it after ``optimizer.step()`` of an update step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

from spectral_lightning.errors import ConfigError
from spectral_lightning.parameterizations.options import check_int
from spectral_lightning.seeds import derive_seed

Grow = Literal["gradient", "random"]
Budget = Literal["per_layer", "global", "global_relative"]
GROWS: tuple[str, ...] = ("gradient", "random")
BUDGETS: tuple[str, ...] = ("per_layer", "global", "global_relative")


def _check_fraction(option: str, value: object) -> float:
    """A number in (0, 1]; raise a ConfigError naming the option otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"{option}={value!r} is not valid: expected a number in (0, 1]")
    return float(value)


def _check_choice(option: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{option}={value!r} is not valid: expected one of {', '.join(choices)}")
    return str(value)


def check_grow_window(grow_window: object, update_every: int | None) -> int:
    """Validate ``grow_window``: an integer in [1, update_every] (the window may not reach back past the previous
    update); any integer ≥ 1 for a fixed support (``update_every`` None), where it has no effect."""
    high = update_every if update_every is not None else None
    return check_int("grow_window", grow_window, 1, high, where="" if high is None else f" for update_every={high}")


def check_support_options(
    update_every: int | None, update_until: float, drop_fraction: float, grow: str, budget: str
) -> tuple[int | None, float, float, str, str]:
    """Validate the moving-support options of a parameterization (each error names the option and its range).

    Returns:
        The five options, normalized (``update_every`` an int or None, the fractions floats).
    """
    every = None if update_every is None else check_int("update_every", update_every, 1)
    return (
        every,
        _check_fraction("update_until", update_until),
        _check_fraction("drop_fraction", drop_fraction),
        _check_choice("grow", grow, GROWS),
        _check_choice("budget", budget, BUDGETS),
    )


@dataclass(frozen=True)
class SupportSchedule:
    """When and how much a moving support changes (options validated by :func:`check_support_options`).

    Args:
        update_every: steps between updates (≥ 1).
        update_until: fraction of training in (0, 1] after which the support is frozen.
        drop_fraction: share of K in (0, 1] replaced at the first update, decayed with a cosine.
        grow: ``gradient`` (largest |Ĝ|) or ``random``.
        budget: ``per_layer`` (each layer keeps its K), ``global`` (ΣK fixed, K moves between layers; raw
            magnitudes compared) or ``global_relative`` (the same, each layer's magnitudes over its mean).
        grow_window: steps whose Ĝ is summed for growth, ending with the update step (1: that step's alone).
    """

    update_every: int
    update_until: float = 0.75
    drop_fraction: float = 0.3
    grow: str = "gradient"
    budget: str = "per_layer"
    grow_window: int = 1

    @property
    def moves_k(self) -> bool:
        """Whether K moves between layers (a global budget, raw or relative)."""
        return self.budget != "per_layer"

    @classmethod
    def of(cls, options: object) -> SupportSchedule | None:
        """The schedule of a parameterization with the options as attributes (``grow_window`` 1 when it has
        none: a parameterization written before the option); None for a fixed support."""
        every = getattr(options, "update_every", None)
        if every is None:
            return None
        names = ("update_until", "drop_fraction", "grow", "budget")
        return cls(
            every, **{name: getattr(options, name) for name in names}, grow_window=getattr(options, "grow_window", 1)
        )

    def is_update_step(self, step: int, total_steps: int) -> bool:
        """Whether the optimizer step ``step`` (0-based: the number of steps completed before it) updates the
        support: a positive multiple of ``update_every`` before ``update_until · total_steps``."""
        return step > 0 and step % self.update_every == 0 and step < self.update_until * total_steps

    def is_probe_step(self, step: int, total_steps: int) -> bool:
        """Whether step ``step`` adds its Ĝ to the next update's: one of the ``grow_window`` steps that end with
        an update step (with gradient growth; random growth needs no Ĝ, so only the update step itself, whose
        probe costs nothing)."""
        window = self.grow_window if self.grow == "gradient" else 1
        update = -(-step // self.update_every) * self.update_every  # the first multiple ≥ step
        return update - step < window and self.is_update_step(update, total_steps)

    def fraction(self, step: int, total_steps: int) -> float:
        """The share of K replaced at ``step``: drop_fraction · (1 + cos(π·step / T_end)) / 2 with
        T_end = update_until · total_steps on update steps, 0 on every other step."""
        if not self.is_update_step(step, total_steps):
            return 0.0
        end = self.update_until * total_steps
        return self.drop_fraction * 0.5 * (1.0 + math.cos(math.pi * step / end))


class MovingSupport(Protocol):
    """What :func:`update_supports` needs of a layer (``OrthonormalCoefficientLinear`` built with a schedule)."""

    in_features: int
    out_features: int
    seed: int
    k: int
    coef: nn.Parameter
    positions: Tensor
    support: SupportSchedule | None

    def arm_gradient_probe(self, gradient: Tensor | None = None) -> None: ...

    def disarm_gradient_probe(self) -> None: ...

    def coefficient_gradient(self) -> Tensor | None: ...

    def set_support(self, positions: Tensor, source: Tensor) -> None: ...


def moving_layers(model: nn.Module) -> list[MovingSupport]:
    """The layers of ``model`` whose support moves, in module order (their index seeds random growth)."""
    return [m for m in model.modules() if getattr(m, "support_moves", False)]  # type: ignore[misc]


def remap(values: Tensor, source: Tensor) -> Tensor:
    """``out[i] = values[source[i]]`` where ``source[i] >= 0``, else exactly 0 (a grown entry)."""
    out = values.new_zeros(source.shape[0])
    keep = source >= 0
    out[keep] = values[source[keep]]
    return out


def remap_optimizer_state(optimizers: Iterable[torch.optim.Optimizer], param: Tensor, source: Tensor) -> None:
    """Move every optimizer state tensor shaped like ``param`` (AdamW's ``exp_avg``, ``exp_avg_sq``, momentum
    buffers, ...) to the new support; grown entries start at 0. Call before ``param`` itself changes."""
    for optimizer in optimizers:
        state = optimizer.state.get(param)
        if not state:
            continue
        for key, value in state.items():
            if isinstance(value, Tensor) and value.shape == param.shape and value.dim() == 1:
                state[key] = remap(value, source.to(value.device))


def merge_support(positions: Tensor, drop: Tensor, grow: Tensor) -> tuple[Tensor, Tensor]:
    """The new sorted positions after dropping entries ``drop`` (indices into ``positions``) and adding the flat
    positions ``grow``, and ``source``: for each new entry the index of its old coefficient, or -1 if grown."""
    keep = torch.ones(positions.shape[0], dtype=torch.bool, device=positions.device)
    keep[drop] = False
    kept = keep.nonzero().squeeze(1)
    new = torch.cat([positions[kept], grow.to(positions.device)])
    source = torch.cat([kept, torch.full_like(grow, -1, device=positions.device)])
    order = torch.argsort(new)
    return new[order], source[order]


@dataclass
class SupportUpdate:
    """What one update did: the step, the share f_t, the share of positions changed over all moving layers
    (grown / ΣK before) and each layer's K afterwards (in :func:`moving_layers` order)."""

    step: int
    fraction: float
    changed: float
    k: list[int] = field(default_factory=list)


@torch.no_grad()
def update_supports(
    layers: Sequence[MovingSupport],
    step: int,
    total_steps: int,
    optimizers: Iterable[torch.optim.Optimizer] = (),
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> SupportUpdate | None:
    """Drop and grow the supports of ``layers`` for optimizer step ``step`` (call it after that step's
    ``optimizer.step()``), then disarm their gradient probes.

    Args:
        layers: the moving layers of one model (:func:`moving_layers`), all with the same schedule.
        step: the 0-based step just taken (the number of steps completed before it).
        total_steps: the run's length in optimizer steps (the schedule's time base).
        optimizers: the optimizers holding the layers' coefficients; their state is moved with the support.
        reduce: averages a tensor over data-parallel ranks (None: one process).

    Returns:
        What changed, or None when ``step`` is not an update step.
    """
    if not layers:
        return None
    schedule = layers[0].support
    if schedule is None or any(layer.support != schedule for layer in layers):
        raise ConfigError("the moving layers of one model must share one schedule (update_every and its options)")
    fraction = schedule.fraction(step, total_steps)
    scores = _gradient_scores(layers, reduce) if fraction > 0 and schedule.grow == "gradient" else None
    for layer in layers:
        layer.disarm_gradient_probe()
    if fraction == 0:
        return None
    if schedule.moves_k:
        plans = _plan_global(layers, fraction, scores, step, relative=schedule.budget == "global_relative")
    else:
        plans = [_plan_layer(layer, i, fraction, scores, step) for i, layer in enumerate(layers)]
    before = sum(layer.k for layer in layers)
    grown = 0
    optimizers = list(optimizers)
    for layer, (drop, grow) in zip(layers, plans, strict=True):
        grown += grow.numel()
        if drop.numel() == 0 and grow.numel() == 0:
            continue
        positions, source = merge_support(layer.positions, drop, grow)
        remap_optimizer_state(optimizers, layer.coef, source)
        layer.set_support(positions, source)
    return SupportUpdate(step, fraction, grown / before, [layer.k for layer in layers])


def _gradient_scores(layers: Sequence[MovingSupport], reduce: Callable[[Tensor], Tensor] | None) -> list[Tensor]:
    """|Ĝ| of each layer, flat (m·n), averaged over ranks first when ``reduce`` is given; zeros for a layer whose
    probe saw no gradient (not used in the step)."""
    grads = []
    for layer in layers:
        g = layer.coefficient_gradient()
        size = layer.out_features * layer.in_features
        grads.append(layer.coef.new_zeros(size, dtype=torch.float32) if g is None else g.reshape(-1).float())
    if reduce is not None:
        flat = reduce(torch.cat(grads))  # one collective for all layers
        grads = list(flat.split([g.numel() for g in grads]))
    return [g.abs() for g in grads]


def _unstored(layer: MovingSupport) -> Tensor:
    """A boolean mask over the m·n positions: True where the layer stores no coefficient."""
    mask = torch.ones(layer.out_features * layer.in_features, dtype=torch.bool, device=layer.positions.device)
    mask[layer.positions] = False
    return mask


def _grow_by_gradient(score: Tensor, unstored: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """The d unstored positions of largest score and their scores (stored positions never qualify)."""
    masked = torch.where(unstored, score.to(unstored.device), torch.full_like(score, -math.inf, device=unstored.device))
    top = torch.topk(masked, d)
    return top.indices, top.values


def _plan_layer(
    layer: MovingSupport, index: int, fraction: float, scores: list[Tensor] | None, step: int
) -> tuple[Tensor, Tensor]:
    """Per-layer budget: drop the d smallest |x|, grow d unstored positions (d capped by the free positions)."""
    unstored = _unstored(layer)
    d = min(round(fraction * layer.k), int(unstored.sum()))
    if d == 0:
        return layer.positions.new_zeros(0), layer.positions.new_zeros(0)
    drop = torch.topk(layer.coef.detach().abs(), d, largest=False).indices.to(layer.positions.device)
    if scores is not None:
        grow = _grow_by_gradient(scores[index], unstored, d)[0]
    else:
        free = unstored.nonzero().squeeze(1)
        gen = torch.Generator().manual_seed(derive_seed(layer.seed, step, index))
        grow = free[torch.randperm(free.numel(), generator=gen)[:d].to(free.device)]
    return drop, grow


def _over_mean(values: Tensor, where: Tensor | None = None) -> Tensor:
    """``values`` divided by their mean (over ``where`` when given); unchanged when that mean is 0."""
    mean = (values if where is None else values[where]).mean() if values.numel() else values.new_zeros(())
    return values / mean if mean > 0 else values


def _plan_global(
    layers: Sequence[MovingSupport], fraction: float, scores: list[Tensor] | None, step: int, relative: bool = False
) -> list[tuple[Tensor, Tensor]]:
    """Global budget: drop the D smallest |x| over all layers (each keeps its largest), grow D over all layers;
    with ``relative`` each layer's |x| and |Ĝ| are first divided by their mean in that layer."""
    unstored = [_unstored(layer) for layer in layers]
    free = [int(u.sum()) for u in unstored]
    droppable = [layer.k - 1 for layer in layers]
    d_total = min(round(fraction * sum(layer.k for layer in layers)), sum(droppable), sum(free))
    empty = [(layer.positions.new_zeros(0), layer.positions.new_zeros(0)) for layer in layers]
    if d_total == 0:
        return empty
    # Drop: the global D smallest are among the union of each layer's D smallest (its largest |x| excluded).
    cand_values, cand_index, cand_layer = [], [], []
    for i, layer in enumerate(layers):
        c = min(d_total, droppable[i])
        if c == 0:
            continue
        mag = layer.coef.detach().abs().float()
        if relative:
            mag = _over_mean(mag)
        mag[torch.argmax(mag)] = math.inf  # every layer keeps at least one coefficient
        low = torch.topk(mag, c, largest=False)
        cand_values.append(low.values.cpu())
        cand_index.append(low.indices.cpu())
        cand_layer.append(torch.full((c,), i, dtype=torch.long))
    chosen = torch.topk(torch.cat(cand_values), d_total, largest=False).indices
    drop_index, drop_layer = torch.cat(cand_index)[chosen], torch.cat(cand_layer)[chosen]
    # Grow: the global D largest |Ĝ| are among the union of each layer's D largest; or D uniform draws.
    if scores is not None:
        cand_values, cand_pos, cand_layer = [], [], []
        for i in range(len(layers)):
            c = min(d_total, free[i])
            if c == 0:
                continue
            score = _over_mean(scores[i], unstored[i].to(scores[i].device)) if relative else scores[i]
            pos, val = _grow_by_gradient(score, unstored[i], c)
            cand_values.append(val.cpu())
            cand_pos.append(pos.cpu())
            cand_layer.append(torch.full((c,), i, dtype=torch.long))
        chosen = torch.topk(torch.cat(cand_values), d_total).indices
        grow_pos, grow_layer = torch.cat(cand_pos)[chosen], torch.cat(cand_layer)[chosen]
    else:
        gen = torch.Generator().manual_seed(derive_seed(layers[0].seed, step, "global"))
        pick = torch.randperm(sum(free), generator=gen)[:d_total]  # uniform over every unstored position
        offsets = torch.tensor([0, *free]).cumsum(0)
        grow_layer = torch.searchsorted(offsets, pick, right=True) - 1
        grow_pos = torch.empty_like(pick)
        for i, u in enumerate(unstored):
            here = grow_layer == i
            if here.any():
                grow_pos[here] = u.nonzero().squeeze(1).cpu()[pick[here] - offsets[i]]
    plans = []
    for i, layer in enumerate(layers):
        device = layer.positions.device
        plans.append((drop_index[drop_layer == i].to(device), grow_pos[grow_layer == i].to(device)))
    return plans
