"""The end of an accumulation window, read to the host in one sync.

The trainer backpropagates every micro-batch without waiting for the device; at the window's
last one it needs its losses, whether each was finite (on every rank, and on its own), the
gradient norm and the weights' fingerprint (:mod:`cellseg.training.watchdogs`): one read brings
them all (:func:`read_window`), and :class:`WindowReading` says what they decide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cellseg.training.device import is_distributed
from cellseg.training.watchdogs import weight_fingerprint


@dataclass(frozen=True)
class WindowReading:
    """One accumulation window as the host reads it.

    Attributes:
        losses: each micro-batch's loss, in micro-batch order (float64).
        finite: whether each loss was finite on every rank (under DDP the minimum over ranks).
        own: whether each loss was finite on this rank.
        norm: the gradient norm (before clipping).
        fingerprint: the weights' fingerprint as the previous step left them.
    """

    losses: list[float]
    finite: list[bool]
    own: list[bool]
    norm: float
    fingerprint: float

    @property
    def bad_gradient(self) -> bool:
        """A non-finite gradient with finite losses: the window is skipped all the same."""
        return not math.isfinite(self.norm) and all(self.finite)

    @property
    def update(self) -> bool:
        """Whether the optimizer steps: every loss and the gradient norm finite."""
        return math.isfinite(self.norm) and all(self.finite)


def read_window(
    window_losses: Sequence[torch.Tensor],
    network: torch.nn.Module,
    fingerprinted: Sequence[torch.Tensor],
    grad_clip: float,
    inject_nan: bool = False,
) -> WindowReading:
    """Clip the window's gradient and read its figures in one host sync.

    Every rank calls it (under DDP the finite flags are all-reduced, so that every rank skips
    together: the last micro-batch's backward has all-reduced a NaN gradient from any rank).

    Args:
        window_losses: the window's detached losses (device scalars), in micro-batch order.
        network: the unwrapped model, its gradients accumulated.
        fingerprinted: the parameters the stall watchdog sums
            (:func:`~cellseg.training.watchdogs.fingerprint_parameters`).
        grad_clip: the gradient norm clipped to.
        inject_nan: fault injection (``inject_nonfinite_grad_after_steps``): NaN gradients.
    """
    losses = torch.stack(list(window_losses)).double()
    own = torch.isfinite(losses).double()
    finite = own.clone()
    if is_distributed():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if inject_nan:
        for parameter in network.parameters():
            if parameter.grad is not None:
                parameter.grad.fill_(float("nan"))
    # clipped before it is known whether the update happens: on a skipped update it only
    # scales a gradient that is zeroed below
    norm = torch.nn.utils.clip_grad_norm_(network.parameters(), grad_clip)
    # the weights as the previous step left them (one float64 sum, no copy): the stall
    # watchdog compares it with the previous step's
    fingerprint = weight_fingerprint(fingerprinted).to(losses.device)
    extra = torch.stack((norm.double().to(losses.device), fingerprint))
    values = torch.cat((losses, finite, own, extra)).tolist()  # the window's one sync
    count = len(losses)
    return WindowReading(
        losses=values[:count],
        finite=[v > 0 for v in values[count : 2 * count]],
        own=[v > 0 for v in values[2 * count : 3 * count]],
        norm=values[-2],
        fingerprint=values[-1],
    )
