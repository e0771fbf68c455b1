"""The Lightning side of moving supports: :class:`AdaptiveSupport` decides when the supports of a model's adaptive
layers move and applies the update (:func:`~spectral_lightning.parameterizations.adaptive.update_supports`).

``SpectralLM.configure_callbacks`` adds it whenever the parameterization has ``update_every`` set, so a config only
sets the parameterization's options. On an update step it arms the layers' gradient probes before the forward pass
(``on_train_batch_start``) and updates the supports right after that step's ``optimizer.step()`` (an optimizer
post-step hook, so the update is part of the step whatever the order of the other callbacks: a checkpoint written at
the end of the step, by ``ModelCheckpoint`` or on SIGTERM, already holds the new supports). It logs
``support/changed`` (share of positions changed, all adaptive layers together) and under a global budget
``support/k/<layer>`` (each layer's K) at every update.

The schedule is a function of ``trainer.global_step`` and the run's length (``trainer.max_steps``, else
``estimated_stepping_batches``), and the supports are model state, so a resumed run updates exactly where an
uninterrupted one does. With ``grow_window`` w > 1 the probes stay armed over the w steps that end with the update
step, and their Ĝ adds up; a checkpoint written inside such a window keeps the partial sums (the callback's state),
and the resumed run goes on from them, so it decides as the uninterrupted one does (bit for bit in one process;
under DDP every rank goes on from rank 0's saved sum, so the ranks still agree and the sum's expectation is
unchanged). With gradient accumulation Ĝ adds up over the step's
micro-batches. Under DDP Ĝ is averaged over the ranks before the decision, so every rank holds the same supports; a
global budget (which resizes the coefficient Parameters) then wraps the model in a new DDP after each update, since
DDP's gradient buckets are sized once.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch.utils.hooks import RemovableHandle

from spectral_lightning.errors import ConfigError
from spectral_lightning.parameterizations.adaptive import MovingSupport, SupportUpdate, moving_layers, update_supports


def has_moving_supports(model: torch.nn.Module) -> bool:
    """Whether any layer of ``model`` has a support that moves during training."""
    return bool(moving_layers(model))


def total_steps(trainer: L.Trainer) -> int:
    """The run's length in optimizer steps, as the LR schedule counts it (``max_steps``, else the estimate)."""
    total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
    if not math.isfinite(total):
        raise ConfigError(
            "trainer.max_steps=-1 with trainer.max_epochs=-1 gives no length for the support schedule "
            "(update_every): set trainer.max_steps (or max_epochs)"
        )
    return int(total)


class AdaptiveSupport(L.Callback):
    """Moves the supports of the model's adaptive layers during training (see the module docstring).

    Added by ``SpectralLM.configure_callbacks`` when the parameterization sets ``update_every``; it has no options
    (they are the parameterization's); its only state is an open ``grow_window``'s partial sums, saved in
    checkpoints.
    """

    def __init__(self) -> None:
        super().__init__()
        self._armed_step: int | None = None
        self._hooks: list[RemovableHandle] = []
        self._trainer: L.Trainer | None = None
        self._pending: SupportUpdate | None = None
        self._restored: tuple[int, list[torch.Tensor | None]] | None = None  # a window's sums from a checkpoint
        self.last_update: SupportUpdate | None = None  # the most recent update (for tests and dashboards)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not has_moving_supports(pl_module):
            return
        self._trainer = trainer
        if not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)):
            raise ConfigError(
                f"supports that move (update_every) need one device or DDP; trainer.strategy is "
                f"{type(trainer.strategy).__name__}: use ddp, or set update_every to null"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if has_moving_supports(pl_module):
            total_steps(trainer)  # fail at the start, not at the first update

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        layers = moving_layers(pl_module)
        step = trainer.global_step
        if not layers or self._armed_step == step:
            return  # nothing moves, or a later micro-batch of an armed step: Ĝ keeps adding up
        schedule, total = layers[0].support, total_steps(trainer)
        if schedule is None or not schedule.is_probe_step(step, total):
            self._disarm(layers)
            return
        restored, self._restored = self._restored, None
        if restored is not None and restored[0] == step:  # resumed inside a window: go on from the saved sums
            for layer, gradient in zip(layers, restored[1], strict=True):
                layer.arm_gradient_probe(gradient)
        for layer in layers:
            layer.arm_gradient_probe()  # armed ones keep their sums: Ĝ adds up over the window
        self._armed_step, self._trainer = step, trainer
        if not schedule.is_update_step(step, total):
            return
        params = {id(layer.coef) for layer in layers}
        for optimizer in trainer.optimizers:
            if any(id(p) in params for group in optimizer.param_groups for p in group["params"]):
                self._hooks.append(optimizer.register_step_post_hook(self._after_optimizer_step))

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        trainer, step = self._trainer, self._armed_step
        assert trainer is not None and step is not None
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        layers = moving_layers(trainer.lightning_module)
        reduce = None
        if trainer.world_size > 1:
            reduce = lambda t: trainer.strategy.reduce(t, reduce_op="mean")  # noqa: E731
        update = update_supports(layers, step, total_steps(trainer), trainer.optimizers, reduce)
        self._pending = self.last_update = update

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        update, self._pending = self._pending, None
        if update is None:
            return
        layers = moving_layers(pl_module)
        if layers[0].support.moves_k and isinstance(trainer.strategy, DDPStrategy):
            _rewrap_ddp(trainer.strategy)
        if not trainer.is_global_zero or not trainer.loggers:
            return
        metrics = {"support/changed": update.changed}
        if layers[0].support.moves_k:
            names = _layer_names(pl_module, layers)
            metrics.update({f"support/k/{name}": float(k) for name, k in zip(names, update.k, strict=True)})
        step = int(getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step)

    def state_dict(self) -> dict[str, Any]:
        """The partial sums of an armed window (``grow_window`` > 1) and the step they continue at; empty
        otherwise (no window open, or the update has consumed it)."""
        trainer = self._trainer
        if trainer is None or self._armed_step is None:
            return {}
        gradients = [layer.coefficient_gradient() for layer in moving_layers(trainer.lightning_module)]
        if all(g is None for g in gradients):
            return {}
        return {"next_step": trainer.global_step, "gradients": [None if g is None else g.cpu() for g in gradients]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._restored = (int(state_dict["next_step"]), list(state_dict["gradients"]))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._disarm(moving_layers(pl_module))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._disarm(moving_layers(pl_module))

    def _disarm(self, layers: list[MovingSupport]) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._armed_step = [], None
        for layer in layers:
            layer.disarm_gradient_probe()


def _layer_names(pl_module: L.LightningModule, layers: list[MovingSupport]) -> list[str]:
    """Module names of ``layers`` relative to the module's model (``blocks.0.attn.qkv``)."""
    root = getattr(pl_module, "model", pl_module)
    names = {id(m): name for name, m in root.named_modules()}
    return [names.get(id(layer), str(i)) for i, layer in enumerate(layers)]


def _rewrap_ddp(strategy: DDPStrategy) -> None:
    """Wrap the module in a new DistributedDataParallel: DDP sizes its gradient buckets from the Parameters once, and
    a global budget has just resized some of them. (Identical supports on every rank: the new wrapper's broadcast
    of rank 0's state changes nothing.) ``configure_ddp`` is the strategy's own public wrapping step: the same
    device ids, DDP options and communication hooks as at start-up."""
    wrapped = strategy.model
    if not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        return
    strategy.model = wrapped.module  # the old wrapper (and its reducer's autograd hooks) go before the next is built
    del wrapped
    strategy.configure_ddp()
