"""The Balanced Softmax Partial Tversky loss (SPEC §4) and the matching inference adjustment.

For logits ``z`` of shape ``(B, C, H, W[, D])`` and targets ``t`` of the same shape with NaN where a
class is not annotated:

* ``f_c``: the class prior, positive / annotated voxels of class ``c`` over the training crops,
  clamped to ``[1e-8, 1 - 1e-8]``;
* ``a_c = tau * (log f_c - mean_c log f_c)``, the logit adjustment (:meth:`logit_adjustment`);
* ``z'_c = z_c - a_c`` (``sign="seed"``) or ``z_c + a_c`` (``sign="additive"``) and ``p = sigmoid(z')``;
* per class over every annotated voxel of the batch: ``TP = sum v p t``, ``FP = sum v p (1 - t)``,
  ``FN = sum v (1 - p) t`` and ``TI_c = (TP + s) / (TP + alpha FP + beta FN + s)``;
* loss = mean of ``1 - TI_c`` over the classes with at least ``min_annotated_voxels`` annotated voxels.
* with group labels in the target (:mod:`cellseg.groups`, issue 33 item 2): one more term per
  group, the partial Tversky index of ``p_union = 1 - prod_members (1 - p_m)`` against the group
  label, averaged with the class terms under the same ``min_annotated_voxels`` rule.

The default implementation is a :class:`torch.autograd.Function` with an analytic backward that
walks the batch in chunks and saves no full-size tensor (backward recomputes the probabilities
chunk by chunk); the plain autograd formulation is kept as a reference and for double backward
(``implementation="autograd"``), and can go through :func:`torch.compile` where a compiler is
available (``implementation="compile"``, optional, falls back to the eager function otherwise).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.modules.loss import _Loss

from cellseg.classes import CLASSES, NUM_CLASSES, NUM_GROUPS
from cellseg.errors import CellsegError
from cellseg.groups import group_partial_tversky, split_groups

__all__ = [
    "PRIOR_CLAMP",
    "BalancedSoftmaxPartialTverskyLoss",
    "InferenceLogitAdjustment",
    "LogitAdjustmentSign",
    "LossImplementation",
    "LossReduction",
    "OnlineClassFrequency",
    "adjusted_probabilities",
    "logit_adjustment",
    "read_class_frequencies",
]

PRIOR_CLAMP = 1e-8
"""Priors are clamped to ``[PRIOR_CLAMP, 1 - PRIOR_CLAMP]`` so that ``log f`` stays finite."""


class LogitAdjustmentSign(StrEnum):
    """Where the adjustment ``a_c`` goes inside the loss.

    ``seed``: ``z' = z - a`` (the seed experiment: rare classes, ``a_c < 0``, get their logits raised
    inside the loss). ``additive``: ``z' = z + a`` (Menon et al.'s logit-adjusted loss, up to the
    class-independent centring of ``log f``).
    """

    SEED = "seed"
    ADDITIVE = "additive"


class InferenceLogitAdjustment(StrEnum):
    """Which logits prediction thresholds (config key ``inference_logit_adjustment``).

    ``train``: the logits the loss saw during training, ``z'`` (so that prediction, validation
    Dice and evaluation match training). ``none``: the raw network logits ``z`` (reproduces the
    seed's behaviour; with ``sign="additive"`` it is Menon et al.'s balanced prediction).
    """

    TRAIN = "train"
    NONE = "none"


class LossImplementation(StrEnum):
    """How the loss is computed; all give the same value and gradient.

    ``function``: a :class:`torch.autograd.Function` with an analytic backward (default: fastest
    eager path and the smallest memory peak). ``autograd``: the formula written with ordinary
    differentiable ops (reference; supports double backward). ``compile``: ``autograd`` through
    :func:`torch.compile`, falling back to ``function`` with a warning when compilation fails.
    """

    FUNCTION = "function"
    AUTOGRAD = "autograd"
    COMPILE = "compile"


class LossReduction(StrEnum):
    """Reduction over classes: ``mean`` over the active classes (SPEC §4), ``sum`` over them, or
    ``none`` for the per-class vector ``(C,)`` of ``1 - TI_c`` (inactive classes are 0)."""

    MEAN = "mean"
    SUM = "sum"
    NONE = "none"


def logit_adjustment(prior: torch.Tensor | Sequence[float], tau: float = 1.0) -> torch.Tensor:
    """The per-class logit adjustment ``a_c = tau * (log f_c - mean_c log f_c)``.

    Args:
        prior: per-class prior ``f_c`` (positive / annotated voxels), shape ``(C,)``.
        tau: temperature of the adjustment; 0 disables it.

    Returns:
        float32 tensor ``(C,)``; negative for classes rarer than the geometric mean of the priors.
    """
    f = torch.as_tensor(prior, dtype=torch.float64).clamp(PRIOR_CLAMP, 1.0 - PRIOR_CLAMP)
    log_f = torch.log(f)
    return (tau * (log_f - log_f.mean())).to(torch.float32)


def read_class_frequencies(path: str | Path) -> dict[str, Any]:
    """Read and check ``class_frequencies.json`` (written by the ``class_frequencies`` rule).

    Args:
        path: the JSON file: ``{"classes": [...], "resolution_nm": ..., "counted_at": ...,
            "per_class": {name: {"annotated_voxels", "positive_voxels", "crops", "prior"}}}``.

    Raises:
        CellsegError: the file is missing, is not JSON, or its classes or priors do not match
            :data:`cellseg.classes.CLASSES`.

    Returns:
        the parsed document, with ``"prior"`` added: a list of the 14 priors in class order.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise CellsegError(f"{path}: no such file; run the class_frequencies rule first") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CellsegError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(doc, dict) or list(doc.get("classes", [])) != list(CLASSES):
        got = doc.get("classes") if isinstance(doc, dict) else None
        raise CellsegError(
            f"{path}: key 'classes' is {got!r}, expected the 14 cellseg classes in order "
            f"{list(CLASSES)}; recompute it with the class_frequencies rule"
        )
    per_class = doc.get("per_class")
    priors: list[float] = []
    for name in CLASSES:
        entry = per_class.get(name) if isinstance(per_class, dict) else None
        if not isinstance(entry, dict):
            raise CellsegError(f"{path}: per_class.{name} is missing; recompute the file")
        prior = entry.get("prior")
        if prior is None and entry.get("annotated_voxels"):
            prior = entry.get("positive_voxels", 0) / entry["annotated_voxels"]
        if prior is None:
            # a class annotated in no training crop: flat, so that it gets no adjustment at all
            prior = float("nan")
        if not isinstance(prior, int | float) or not (math.isnan(prior) or 0.0 <= prior <= 1.0):
            raise CellsegError(f"{path}: per_class.{name}.prior is {prior!r}, expected 0..1")
        priors.append(float(prior))
    arr = np.asarray(priors, dtype=np.float64)
    if np.isnan(arr).any():
        known = arr[~np.isnan(arr)]
        # geometric mean of the known priors: a_c = 0 for the unknown classes
        fill = (
            float(np.exp(np.log(np.clip(known, PRIOR_CLAMP, 1 - PRIOR_CLAMP)).mean()))
            if known.size
            else 0.5
        )
        arr = np.where(np.isnan(arr), fill, arr)
    doc["prior"] = arr.tolist()
    return doc


def _reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    return (0, *range(2, x.ndim))


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    # float32 at least (bf16/fp16 sums over millions of voxels would lose every digit)
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _class_view(a: torch.Tensor, ndim: int) -> torch.Tensor:
    return a.view(1, -1, *([1] * (ndim - 2)))


def _add_class_shift(
    logits: torch.Tensor, shift: torch.Tensor, in_place: bool = False
) -> torch.Tensor:
    """``logits + shift`` along the class axis: ``(B, C, ...)`` plus ``(C,)``, in ``logits``'s dtype
    (added into ``logits`` itself when ``in_place``)."""
    if logits.ndim < 2 or shift.numel() != logits.shape[1]:
        raise ValueError(
            f"logits {tuple(logits.shape)}: expected (B, {shift.numel()}, ...) for a "
            f"{shift.numel()}-class shift"
        )
    shift = _class_view(shift.to(device=logits.device, dtype=logits.dtype), logits.ndim)
    return logits.add_(shift) if in_place else logits + shift


def _tversky_from_sums(
    tp: torch.Tensor, sp: torch.Tensor, pos: torch.Tensor, alpha: float, beta: float, smooth: float
) -> torch.Tensor:
    """``TI_c`` from ``TP``, ``S_p = sum v p`` and ``T = sum v t`` (then FP = S_p - TP, FN = T - TP)."""
    fp = sp - tp
    fn = pos - tp
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def _flat(values: torch.Tensor) -> torch.Tensor:
    """``(B, C, *S)`` → ``(B, C, prod S)`` (a view where ``values`` is contiguous)."""
    return values.reshape(*values.shape[:2], -1)


def _chunks(logits: torch.Tensor, chunk_size: int) -> list[tuple[int, slice]]:
    """(sample, voxel slice) pieces of ``(B, C, S)`` with about ``chunk_size`` elements each."""
    batch, classes = logits.shape[:2]
    voxels = logits[0, 0].numel()
    step = max(1, min(voxels, chunk_size // classes))
    return [(b, slice(s, s + step)) for b in range(batch) for s in range(0, voxels, step)]


def _chunk_probabilities(
    z: torch.Tensor, t: torch.Tensor, shift: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For one ``(C, L)`` chunk: ``q = v * sigmoid(z + shift)``, ``t0 = v * t`` and ``~v``."""
    unannotated = torch.isnan(t)
    q = torch.add(z.to(dtype), shift[:, None])
    q.sigmoid_()
    q.masked_fill_(unannotated, 0.0)
    t0 = t.to(dtype).masked_fill(unannotated, 0.0)
    return q, t0, unannotated


class _PartialTverskyFunction(torch.autograd.Function):
    """Per-class Tversky index of ``sigmoid(z + shift)`` against NaN-masked targets.

    Forward returns ``(TI, n)``, both ``(C,)``: the Tversky index and the number of annotated
    voxels per class. Both passes walk the batch in chunks of about ``chunk_size`` elements
    (every class of a run of voxels of one sample at once), so temporaries are a chunk, not
    ``(B, C, ...)``; nothing full-size is saved for backward (only the caller's logits and
    targets, alive anyway, and the per-class sums): backward recomputes the masked
    probabilities ``q = v * p`` chunk by chunk and uses ``v p (1 - p) = q (1 - q)`` (exact,
    also on unannotated voxels where both are 0): ``dTI_c/dz = q (1 - q) (dTI/dTP t0 + dTI/dS_p)``
    with ``S_p = sum q``. Per-class sums are accumulated over chunks in float64.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: torch.Tensor,
        target: torch.Tensor,
        shift: torch.Tensor,
        alpha: float,
        beta: float,
        smooth: float,
        chunk_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = _compute_dtype(logits)
        z, t = _flat(logits), _flat(target)
        sums = torch.zeros(4, logits.shape[1], dtype=torch.float64, device=logits.device)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            shift = shift.to(dtype)
            for b, piece in _chunks(logits, chunk_size):
                q, t0, unannotated = _chunk_probabilities(
                    z[b, :, piece], t[b, :, piece], shift, dtype
                )
                sums[0] += unannotated.shape[1] - unannotated.sum(dim=1)
                sums[1] += t0.sum(dim=1)
                sums[2] += q.sum(dim=1)
                sums[3] += t0.mul_(q).sum(dim=1)  # in place: TP without one more temporary
            n, pos, sp, tp = sums.unbind(0)
            pos, sp, tp = pos.to(dtype), sp.to(dtype), tp.to(dtype)
            ti = _tversky_from_sums(tp, sp, pos, alpha, beta, smooth)
        ctx.save_for_backward(logits, target, shift, tp, sp, pos)
        ctx.coefs = (alpha, beta, smooth, chunk_size)
        n = n.round().to(torch.int64)
        ctx.mark_non_differentiable(n)
        return ti, n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_ti: torch.Tensor, _grad_n: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        logits, target, shift, tp, sp, pos = ctx.saved_tensors
        alpha, beta, smooth, chunk_size = ctx.coefs
        if not ctx.needs_input_grad[0]:
            return (None,) * 7
        dtype = tp.dtype
        z, t = _flat(logits), _flat(target)
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        grad_view = _flat(grad)  # a view (grad is contiguous): the chunks are written into grad
        with torch.autocast(device_type=logits.device.type, enabled=False):
            # TI = (TP + s) / D, D = (1 - alpha - beta) TP + alpha S_p + beta T + s
            num = tp + smooth
            den = (1.0 - alpha - beta) * tp + alpha * sp + beta * pos + smooth
            g = grad_ti.to(dtype)
            d_tp = (g * (1.0 / den - num * (1.0 - alpha - beta) / (den * den)))[:, None]
            d_sp = (g * (-num * alpha / (den * den)))[:, None]
            for b, piece in _chunks(logits, chunk_size):
                q, t0, _ = _chunk_probabilities(z[b, :, piece], t[b, :, piece], shift, dtype)
                t0.mul_(d_tp).add_(d_sp)
                # g q (1 - q) = g q - (g q) q in place; q = 0 makes it exactly 0 where unannotated
                t0.mul_(q)
                t0.addcmul_(t0, q, value=-1.0)
                grad_view[b, :, piece].copy_(t0)
        return grad, None, None, None, None, None, None


def _partial_tversky_autograd(
    logits: torch.Tensor,
    target: torch.Tensor,
    shift: torch.Tensor,
    alpha: float,
    beta: float,
    smooth: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the same ``(TI, n)`` with plain differentiable ops (several full-size temporaries)."""
    dims = _reduce_dims(logits)
    dtype = _compute_dtype(logits)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        valid = ~torch.isnan(target)
        n = valid.sum(dim=dims)
        t0 = torch.nan_to_num(target.to(dtype), nan=0.0)
        p = torch.sigmoid(logits.to(dtype) + _class_view(shift.to(dtype), logits.ndim))
        # masked_fill, not a product with the mask: its gradient is exactly 0 on masked voxels
        q = p.masked_fill(~valid, 0.0)
        tp = (q * t0).sum(dim=dims)
        sp = q.sum(dim=dims)
        pos = t0.sum(dim=dims)
        return _tversky_from_sums(tp, sp, pos, alpha, beta, smooth), n


class BalancedSoftmaxPartialTverskyLoss(_Loss):
    """Balanced Softmax Partial Tversky loss for partially annotated multi-label segmentation.

    See the module docstring and SPEC §4 for the formula. Unannotated voxels (NaN targets) take no
    part in the loss and receive exactly zero gradient; the sums are taken over the whole batch
    in float32 (float64 for float64 logits) even under bf16 autocast.

    Args:
        prior: per-class prior ``f_c`` = positive / annotated voxels over the training crops,
            shape ``(C,)`` in the class order of :data:`cellseg.classes.CLASSES`.
        tau: temperature of the logit adjustment (0 disables it).
        alpha: weight of false positives.
        beta: weight of false negatives.
        smooth: added to the numerator and denominator of each Tversky index; must be > 0.
        min_annotated_voxels: a class enters the loss only with at least this many annotated
            voxels in the batch.
        sign: :class:`LogitAdjustmentSign`, ``"seed"`` (``z - a``) or ``"additive"`` (``z + a``).
        implementation: :class:`LossImplementation`.
        reduction: :class:`LossReduction` over classes.
        chunk_size: elements per chunk of the ``function`` implementation (its temporaries are a
            few chunks); ``None``: ``2**20`` on CPU (cache-sized), ``2**25`` on GPUs (few launches).
        bce_weight: adds ``bce_weight`` × each active class's binary cross-entropy of the
            adjusted logits, averaged over its annotated voxels, to its ``1 - TI_c``: with
            ``alpha = beta = 0.5`` the Dice+BCE reference of the seed's loss study (0: none, the
            seed's loss; the BCE term makes one float32 copy of the logits).

    Raises:
        ValueError: a prior is outside [0, 1] or not finite, the prior is not one-dimensional,
            ``tau``, ``alpha``, ``beta`` or ``min_annotated_voxels`` is negative, ``chunk_size`` is
            below 1, ``smooth`` is not positive, ``alpha + beta`` is 0, or an option is not one of its enum's values.
    """

    adjustment: torch.Tensor
    prior: torch.Tensor

    def __init__(
        self,
        prior: torch.Tensor | Sequence[float],
        tau: float = 1.0,
        alpha: float = 0.6,
        beta: float = 0.4,
        smooth: float = 1e-6,
        min_annotated_voxels: int = 10,
        sign: LogitAdjustmentSign | str = LogitAdjustmentSign.SEED,
        implementation: LossImplementation | str = LossImplementation.FUNCTION,
        reduction: LossReduction | str = LossReduction.MEAN,
        chunk_size: int | None = None,
        bce_weight: float = 0.0,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        prior_t = torch.as_tensor(prior, dtype=torch.float64)
        if prior_t.ndim != 1 or prior_t.numel() == 0:
            raise ValueError(
                f"prior must be a non-empty vector (C,), got shape {tuple(prior_t.shape)}"
            )
        if not torch.isfinite(prior_t).all() or (prior_t < 0).any() or (prior_t > 1).any():
            raise ValueError(f"prior must hold fractions in [0, 1], got {prior_t.tolist()}")
        for name, value in (("tau", tau), ("alpha", alpha), ("beta", beta), ("bce", bce_weight)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if alpha + beta <= 0:
            raise ValueError("alpha + beta must be > 0")
        if not math.isfinite(smooth) or smooth <= 0:
            raise ValueError(f"smooth must be > 0 (it keeps empty classes finite), got {smooth}")
        if int(min_annotated_voxels) != min_annotated_voxels or min_annotated_voxels < 0:
            raise ValueError(
                f"min_annotated_voxels must be an integer >= 0, got {min_annotated_voxels}"
            )
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        self.chunk_size = chunk_size
        self.bce_weight = float(bce_weight)
        self.tau = float(tau)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.smooth = float(smooth)
        self.min_annotated_voxels = int(min_annotated_voxels)
        self.sign = LogitAdjustmentSign(sign)
        self.implementation = LossImplementation(implementation)
        self.register_buffer("prior", prior_t.to(torch.float32), persistent=False)
        self.register_buffer("adjustment", logit_adjustment(prior_t, self.tau), persistent=False)
        self._compiled: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
        self._compile_failed = False
        self.last_tversky: torch.Tensor | None = None
        """Per-class Tversky index ``(C,)`` of the last forward (detached), for logging."""
        self.last_annotated: torch.Tensor | None = None
        """Per-class annotated-voxel count ``(C,)`` of the last forward, for logging."""

    @classmethod
    def from_class_frequencies(
        cls, path: str | Path, **kwargs: Any
    ) -> BalancedSoftmaxPartialTverskyLoss:
        """Build the loss with the priors of ``class_frequencies.json``.

        Args:
            path: the file written by the ``class_frequencies`` rule.
            **kwargs: the other constructor options.

        Raises:
            CellsegError: see :func:`read_class_frequencies`.

        Returns:
            the loss, its ``prior`` in :data:`cellseg.classes.CLASSES` order.
        """
        return cls(read_class_frequencies(path)["prior"], **kwargs)

    @property
    def num_classes(self) -> int:
        return int(self.prior.numel())

    def logit_adjustment(self) -> torch.Tensor:
        """The per-class adjustment ``a_c`` (float32, ``(C,)``; for TensorBoard).

        Negative ``a_c``: a class rarer than the geometric mean, whose logits the seed form
        raises inside the loss by ``|a_c|``.
        """
        return self.adjustment.detach().clone()

    def shift(self) -> torch.Tensor:
        """What the loss adds to the logits, ``(C,)``: ``-a`` (seed) or ``+a`` (additive)."""
        return -self.adjustment if self.sign is LogitAdjustmentSign.SEED else self.adjustment

    def adjust(
        self,
        logits: torch.Tensor,
        mode: InferenceLogitAdjustment | str = InferenceLogitAdjustment.TRAIN,
    ) -> torch.Tensor:
        """The logits inference should threshold, so that prediction matches training.

        Args:
            logits: raw network output ``(B, C, H, W[, D])`` (for a single crop ``(C, ...)``,
                pass ``logits[None]``).
            mode: :class:`InferenceLogitAdjustment`; ``train`` returns ``z'`` (the loss's own
                adjusted logits), ``none`` returns ``logits`` unchanged.

        Raises:
            ValueError: ``mode`` is unknown or channel 1 does not have ``C`` entries.

        Returns:
            tensor shaped like ``logits``, in ``logits``'s dtype.
        """
        mode = InferenceLogitAdjustment(mode)
        if mode is InferenceLogitAdjustment.NONE:
            return logits
        return _add_class_shift(logits, self.shift())

    def _chunk_size(self, logits: torch.Tensor) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        return 2**20 if logits.device.type == "cpu" else 2**25

    def _per_class(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shift = self.shift().to(logits.device)
        args = (logits, target, shift, self.alpha, self.beta, self.smooth)
        impl = self.implementation
        if impl is LossImplementation.COMPILE and not self._compile_failed:
            try:
                if self._compiled is None:
                    self._compiled = torch.compile(_partial_tversky_autograd, dynamic=False)
                return self._compiled(*args)
            except Exception as exc:
                # compilation is lazy and may fail at any new shape (no C++ compiler, no Triton,
                # an unsupported op): from then on, stay on the eager path
                self._compile_failed = True
                warnings.warn(
                    f"torch.compile unavailable for the loss ({type(exc).__name__}: {exc}); "
                    "using the eager autograd.Function",
                    RuntimeWarning,
                    stacklevel=3,
                )
        if impl is LossImplementation.AUTOGRAD:
            return _partial_tversky_autograd(*args)
        return _PartialTverskyFunction.apply(*args, self._chunk_size(logits))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            input: logits ``(B, C, H, W)`` or ``(B, C, D, H, W)``, any float dtype; pass bf16
                logits as they are: the ``function`` implementation converts them to float32
                chunk by chunk and saves only them and per-class sums for backward (its gradient
                is bf16), whereas a caller's ``.float()`` keeps a float32 copy alive until backward.
            target: same shape; 0/1 (or soft values in [0, 1]) where annotated, NaN elsewhere;
                or ``(B, 14 + NUM_GROUPS, ...)``, the group labels after the 14 classes
                (:mod:`cellseg.groups`): each group then adds the partial Tversky term of its
                members' union probability, averaged with the class terms.

        Raises:
            ValueError: the shapes differ, are not 4-D or 5-D, or ``C`` does not match the prior.

        Returns:
            scalar (``reduction`` ``mean``/``sum``) or ``(C,)`` (``none``; ``(C + G,)`` with
            groups), float32 (float64 for
            float64 logits); ``0`` still attached to the graph when no class is active.
        """
        with_groups = (
            target.ndim == input.ndim
            and target.shape[1] == input.shape[1] + NUM_GROUPS
            and target.shape[0] == input.shape[0]
            and target.shape[2:] == input.shape[2:]
        )
        if input.shape != target.shape and not with_groups:
            raise ValueError(f"logits {tuple(input.shape)} and target {tuple(target.shape)} differ")
        if input.ndim not in (4, 5):
            raise ValueError(f"expected (B, C, H, W) or (B, C, D, H, W), got {tuple(input.shape)}")
        if input.shape[1] != self.num_classes:
            raise ValueError(f"logits have {input.shape[1]} channels, the prior {self.num_classes}")
        if not target.is_floating_point():
            target = target.float()
        target, group_target = split_groups(target, self.num_classes)
        ti, n = self._per_class(input, target)
        if group_target is not None:
            # group terms with plain autograd on top of the per-class path (whichever it is):
            # their gradients add to the per-class ones through the shared logits
            group_ti, group_n = group_partial_tversky(
                input, group_target, self.shift(), self.alpha, self.beta, self.smooth
            )
            ti = torch.cat((ti, group_ti.to(ti.dtype)))
            n = torch.cat((n, group_n.to(n.device)))
        active = n >= self.min_annotated_voxels
        self.last_tversky = ti.detach()
        self.last_annotated = n.detach()
        # multiply, not index: keeps a (zero) graph even when no class is active
        per_class = (1.0 - ti) * active.to(ti.dtype)
        if self.bce_weight > 0:
            # BCE only on the 14 classes: a group has no logit of its own
            bce = self._bce(input, target, n[: self.num_classes])
            if group_target is not None:
                bce = torch.cat((bce, bce.new_zeros(NUM_GROUPS)))
            per_class = per_class + self.bce_weight * bce * active.to(ti.dtype)
        if self.reduction == LossReduction.NONE:
            return per_class
        total = per_class.sum()
        if self.reduction == LossReduction.SUM:
            return total
        return total / active.sum().clamp_min(1).to(ti.dtype)

    def _bce(self, logits: torch.Tensor, target: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """Per-class binary cross-entropy ``(C,)`` of the adjusted logits over annotated voxels."""
        adjusted = self.adjust(logits.to(_compute_dtype(logits)))
        annotated = ~torch.isnan(target)
        elementwise = torch.nn.functional.binary_cross_entropy_with_logits(
            adjusted, torch.nan_to_num(target, nan=0.0).to(adjusted.dtype), reduction="none"
        )
        total = torch.where(annotated, elementwise, 0.0).sum(_reduce_dims(logits))
        return total / n.to(total.dtype).clamp_min(1)


def adjusted_probabilities(
    logits: torch.Tensor,
    adjustment: BalancedSoftmaxPartialTverskyLoss | torch.Tensor | None,
    mode: InferenceLogitAdjustment | str = InferenceLogitAdjustment.TRAIN,
    *,
    in_place: bool = False,
) -> torch.Tensor:
    """Per-class probabilities for prediction, matching training (SPEC §4 "Inference must match").

    Args:
        logits: raw network output ``(B, C, H, W[, D])``.
        adjustment: the training loss (its :meth:`~BalancedSoftmaxPartialTverskyLoss.shift` is
            used), or the shift vector ``(C,)`` itself (``-a`` for the seed form, as stored in a
            checkpoint), or ``None`` for no adjustment.
        mode: :class:`InferenceLogitAdjustment`.
        in_place: compute in float32 ``logits`` itself and return it (whole-volume prediction:
            a block's logits are GBs and not needed afterwards).

    Raises:
        ValueError: ``mode`` is unknown, the shift does not have ``C`` entries, or ``in_place``
            with logits that are not float32.

    Returns:
        float32 probabilities ``sigmoid(z')`` shaped like ``logits`` (threshold at 0.5).
    """
    mode = InferenceLogitAdjustment(mode)
    if in_place and logits.dtype != torch.float32:
        raise ValueError(f"in_place needs float32 logits, not {logits.dtype}")
    z = logits if in_place else logits.float()
    if mode is not InferenceLogitAdjustment.NONE and adjustment is not None:
        shift = (
            adjustment.shift()
            if isinstance(adjustment, BalancedSoftmaxPartialTverskyLoss)
            else adjustment
        )
        z = _add_class_shift(z, torch.as_tensor(shift, dtype=torch.float32), in_place=in_place)
    return z.sigmoid_() if in_place else torch.sigmoid(z)


class OnlineClassFrequency:
    """Online estimate of the class prior, as the seed did (logged only, next to the exact prior).

    Every batch adds the positive and annotated voxel counts of its targets; every
    ``update_every`` batches the window's frequency ``positive / annotated`` enters an exponential
    moving average ``f <- momentum f + (1 - momentum) f_window`` (classes not annotated in the
    window keep their value). The estimate starts flat, so its adjustment is 0 until the first
    update, as in the seed. Under DDP the window counts are summed across ranks at each update, so
    every rank must call :meth:`update` the same number of times (a collective every
    ``update_every`` batches).

    Args:
        num_classes: ``C``.
        update_every: batches per EMA update (seed: 50).
        momentum: weight of the old estimate in the EMA, in [0, 1).
        initial: the flat starting value of every class.

    Raises:
        ValueError: ``update_every`` < 1, ``momentum`` outside [0, 1) or ``initial`` outside (0, 1).
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        update_every: int = 50,
        momentum: float = 0.9,
        initial: float | None = None,
    ) -> None:
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        initial = 1.0 / num_classes if initial is None else initial
        if not 0.0 < initial < 1.0:
            raise ValueError(f"initial must be in (0, 1), got {initial}")
        self.num_classes = num_classes
        self.update_every = update_every
        self.momentum = momentum
        self.frequency = torch.full((num_classes,), float(initial), dtype=torch.float64)
        """Current estimate ``(C,)`` (float64, CPU)."""
        self.updates = 0
        self._batches = 0
        self._window: torch.Tensor | None = (
            None  # (2, C): positive, annotated; on the data's device
        )

    @torch.no_grad()
    def update(self, target: torch.Tensor) -> bool:
        """Count one batch; every ``update_every`` batches, update the EMA.

        Args:
            target: ``(B, C, H, W[, D])`` with NaN where unannotated.

        Returns:
            True when this call updated :attr:`frequency` (time to log it).
        """
        dims = _reduce_dims(target)
        t = target.float() if not target.is_floating_point() else target
        counts = torch.stack(
            (
                torch.nan_to_num(t, nan=0.0).sum(dim=dims, dtype=torch.float64),
                (~torch.isnan(t)).sum(dim=dims).to(torch.float64),
            )
        )
        self._window = counts if self._window is None else self._window + counts
        self._batches += 1
        if self._batches < self.update_every:
            return False
        window = self._window
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(window)
        window = window.cpu()
        positive, annotated = window[0], window[1]
        seen = annotated > 0
        freq = torch.where(seen, positive / annotated.clamp_min(1.0), self.frequency)
        self.frequency = torch.where(
            seen, self.momentum * self.frequency + (1.0 - self.momentum) * freq, self.frequency
        )
        self.updates += 1
        self._batches = 0
        self._window = None
        return True

    def logit_adjustment(self, tau: float = 1.0) -> torch.Tensor:
        """``a_c`` of the current estimate, float32 ``(C,)``, for logging next to the exact one."""
        return logit_adjustment(self.frequency, tau)

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (the partial window is dropped: it restarts after a resume)."""
        return {"frequency": self.frequency.clone(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.frequency = torch.as_tensor(state["frequency"], dtype=torch.float64).clone()
        self.updates = int(state["updates"])
        self._batches = 0
        self._window = None
