"""The moving-support methods a coefficient layer needs (:class:`MovingSupportMixin`): the gradient probe that
captures Ĝ, the move to new positions and loading a support of another size. The update maths that call them
(schedule, drop and grow, optimizer state) are in :mod:`~spectral_lightning.parameterizations.adaptive`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spectral_lightning.errors import ConfigError
from spectral_lightning.parameterizations.adaptive import SupportSchedule, remap


class MovingSupportMixin:
    """The moving-support methods of a coefficient layer (``OrthonormalCoefficientLinear`` puts it before
    ``nn.Module`` in its bases): the gradient probe that captures Ĝ, the move to new positions, loading a support
    of another size, and the schedule in the layer's repr. They act only where ``support_moves`` is True. The host
    layer holds ``coef``, ``positions``, ``k``, ``ra``/``cb`` (its coefficient corner: m×n when the support moves),
    ``basis_in``, ``support`` and the ``_probe`` and ``_cache`` slots, and scatters into ``_probe`` while armed."""

    support: SupportSchedule | None
    support_moves: bool
    coef: nn.Parameter
    positions: Tensor
    k: int
    ra: int
    cb: int
    basis_in: Tensor
    _probe: Tensor | None

    def arm_gradient_probe(self, gradient: Tensor | None = None) -> None:
        """Capture Ĝ = P_m (∂L/∂W) P_nᵀ in the coming backward passes (until disarmed; they add up): the
        coefficients are scattered into a zero m×n tensor that requires grad instead of plain zeros, which leaves
        the forward bit for bit unchanged and costs no extra product. A probe already armed stays as it is (its
        sum goes on); ``gradient`` (m, n), when given to an unarmed layer, is the sum to go on from (a window
        restored from a checkpoint)."""
        if not self.support_moves:
            raise ConfigError(f"{type(self).__name__} has a fixed support (update_every=None): nothing to capture")
        if self._probe is None:
            dtype = self.basis_in.dtype
            self._probe = torch.zeros(self.ra * self.cb, dtype=dtype, device=self.coef.device, requires_grad=True)
            if gradient is not None:
                self._probe.grad = gradient.reshape(-1).to(device=self.coef.device, dtype=dtype).clone()

    def disarm_gradient_probe(self) -> None:
        """Stop capturing and forget the captured gradient."""
        self._probe = None

    def coefficient_gradient(self) -> Tensor | None:
        """Ĝ (m, n) accumulated since :meth:`arm_gradient_probe`, zero at the stored positions; None when
        unarmed or before a backward pass."""
        grad = None if self._probe is None else self._probe.grad
        return None if grad is None else grad.view(self.ra, self.cb)

    @torch.no_grad()
    def set_support(self, positions: Tensor, source: Tensor) -> None:
        """Move to sorted flat ``positions``; ``source[i]`` is the old index of the coefficient now at
        ``positions[i]``, or -1 for a grown one (starts at 0). The ``coef`` Parameter stays the same object (the
        optimizer keeps its reference); its size changes when K does (global budget)."""
        coef = self.coef.detach()
        new = remap(coef, source.to(coef.device))
        if new.shape == coef.shape:  # in place: DDP's buffers and the optimizer see the same tensors
            self.coef.copy_(new)
            self.positions.copy_(positions)
        else:
            self.coef.data = new
            self.coef.grad = None  # a gradient of the old size means nothing now
            self.positions = positions.to(self.positions.device)
        self.k = positions.numel()
        self._cache = None

    def _load_from_state_dict(self, state_dict, prefix, *args):  # noqa: ANN001, ANN002, ANN202 (nn.Module signature)
        saved = state_dict.get(prefix + "positions")
        if self.support_moves and isinstance(saved, Tensor) and saved.dim() == 1 and saved.numel() != self.k:
            # Under a global budget a trained layer's K differs from a freshly built one's: take the saved size.
            self.coef.data = self.coef.data.new_zeros(saved.numel())
            self.positions = self.positions.new_zeros(saved.numel())
            self.k = saved.numel()
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._cache = None

    def extra_repr(self) -> str:
        if not self.support_moves:
            return super().extra_repr()
        s = self.support
        return (
            f"{super().extra_repr()}, support moves every {s.update_every} steps until {s.update_until:g} "
            f"(drop {s.drop_fraction:g}, grow {s.grow}"
            + (f" over {s.grow_window} steps" if s.grow == "gradient" and s.grow_window > 1 else "")
            + f", budget {s.budget})"
        )
