"""The model registry: module-level dicts filled by ``@register_model``, in the style of timm.

A model is identified by ``(name, dim)``, e.g. ``("swin", "3d")``. Its entry holds the builder
(a function taking ``in_channels``, ``out_channels`` and the resolved architecture keyword
arguments), the presets (``seed`` and ``demo``: plain dicts, so that the user's config can
override any key) and the rule its input shape must follow. Registration only happens because
``cellseg.models.__init__`` imports every family module.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from cellseg.errors import CellsegError

DIMS: tuple[str, ...] = ("2d", "3d")
"""Valid values of ``dim``; ``spatial_dims`` of the network is ``int(dim[0])``."""

PRESETS: tuple[str, ...] = ("seed", "demo")
"""``seed``: the reference experiment's sizes (SPEC §5). ``demo``: the same families, tiny."""


@dataclass(frozen=True)
class InputRule:
    """What spatial shapes a model accepts (``(H, W)`` in 2D, ``(D, H, W)`` in 3D, voxels).

    Attributes:
        default: the preset's training patch shape; always valid.
        divisor: every spatial size must be a positive multiple of ``divisor[i]`` (the total
            stride, or the patch size of a transformer).
        fixed: when set, the only accepted shape (transformers with a learned position
            embedding of fixed length: UNETR, the 2D ViT and the 2D Swin); sliding-window
            inference with ``roi_size=fixed`` handles any larger image.
    """

    default: tuple[int, ...]
    divisor: tuple[int, ...]
    fixed: tuple[int, ...] | None = None

    def is_valid(self, shape: Sequence[int]) -> bool:
        """Whether ``shape`` (spatial only) is accepted."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != len(self.default):
            return False
        if self.fixed is not None:
            return shape == self.fixed
        return all(s > 0 and s % d == 0 for s, d in zip(shape, self.divisor, strict=True))

    def nearest(self, shape: Sequence[int], count: int = 2) -> list[tuple[int, ...]]:
        """Up to ``count`` valid shapes closest to ``shape`` (spatial only), nearest first."""
        if self.fixed is not None or len(shape) != len(self.default):
            return [self.fixed or self.default]
        per_axis = []
        for s, d in zip(shape, self.divisor, strict=True):
            lower = max(d, (int(s) // d) * d)
            per_axis.append(sorted({lower, lower + d} if lower < s else {lower}))
        candidates = [tuple(c) for c in itertools.product(*per_axis)]

        def distance(c: tuple[int, ...]) -> float:
            return sum(abs(a - int(b)) for a, b in zip(c, shape, strict=True))

        return sorted(candidates, key=lambda c: (distance(c), c))[:count]

    def describe(self) -> str:
        """A human-readable rule, e.g. ``"each size a multiple of 32x32"``."""
        if self.fixed is not None:
            return f"exactly {format_shape(self.fixed)}"
        return f"each size a multiple of {format_shape(self.divisor)}"


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: builder, presets as data, input rule, documentation."""

    name: str
    dim: str
    builder: Callable[..., nn.Module]
    presets: Mapping[str, Mapping[str, Any]]
    input_rule: Callable[[Mapping[str, Any]], InputRule]
    library: str
    description: str = ""
    pretrained_capable: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)


_model_entries: dict[tuple[str, str], ModelEntry] = {}
"""(name, dim) -> entry; filled at import time of the family modules."""


def register_model(
    name: str,
    dim: str,
    *,
    presets: Mapping[str, Mapping[str, Any]],
    input_rule: Callable[[Mapping[str, Any]], InputRule],
    library: str,
    description: str = "",
    pretrained_capable: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``fn(in_channels, out_channels, **config) -> nn.Module``.

    Every preset must define the same keys (they are the overridable architecture options) and
    an ``input_shape`` (the training patch, voxels). A duplicate registration warns and
    replaces, as timm does.
    """
    if dim not in DIMS:
        raise ValueError(f"dim must be one of {DIMS}, got {dim!r}")
    missing = [p for p in PRESETS if p not in presets]
    if missing:
        raise ValueError(f"model {name} {dim}: presets {missing} missing")
    keys = {p: set(cfg) for p, cfg in presets.items()}
    if len({frozenset(k) for k in keys.values()}) != 1 or "input_shape" not in keys["seed"]:
        raise ValueError(f"model {name} {dim}: presets must share keys incl. input_shape: {keys}")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if (name, dim) in _model_entries:
            warnings.warn(f"model {name} {dim} registered twice; replacing", stacklevel=2)
        _model_entries[(name, dim)] = ModelEntry(
            name=name,
            dim=dim,
            builder=fn,
            presets={p: dict(cfg) for p, cfg in presets.items()},
            input_rule=input_rule,
            library=library,
            description=description or (fn.__doc__ or "").strip().splitlines()[0],
            pretrained_capable=pretrained_capable,
        )
        return fn

    return decorator


_CANONICAL_ORDER = ("unet", "resnet", "swin", "vit")


def list_models(dim: str | None = None) -> list[tuple[str, str]]:
    """Registered ``(name, dim)`` pairs, by dim then unet, resnet, swin, vit, then others."""
    if dim is not None:
        _check_dim(dim)
    order = {n: i for i, n in enumerate(_CANONICAL_ORDER)}
    keys = [k for k in _model_entries if dim is None or k[1] == dim]
    return sorted(keys, key=lambda k: (k[1], order.get(k[0], len(order)), k[0]))


def is_model(name: str, dim: str) -> bool:
    """Whether ``(name, dim)`` is registered."""
    return (name, dim) in _model_entries


def get_entry(name: str, dim: str) -> ModelEntry:
    """The registry entry, or a one-line :class:`CellsegError` naming the valid choices."""
    _check_dim(dim)
    try:
        return _model_entries[(name, dim)]
    except KeyError:
        valid = [n for n, _ in list_models(dim)]
        raise CellsegError(
            f"unknown model {name!r} for dim {dim!r}; valid models: {', '.join(valid)}"
        ) from None


def model_config(name: str, dim: str, preset: str = "seed", **overrides: Any) -> dict[str, Any]:
    """The preset's architecture options with the user's ``overrides`` applied.

    Raises:
        CellsegError: unknown model, dim, preset or override key (one line naming the valid ones).
    """
    entry = get_entry(name, dim)
    if preset not in entry.presets:
        raise CellsegError(
            f"model {name} {dim}: unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}"
        )
    config = dict(entry.presets[preset])
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise CellsegError(
            f"model {name} {dim}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(sorted(config))}"
        )
    config.update(overrides)
    if config.get("pretrained") and not entry.pretrained_capable:  # pragma: no cover - no key
        raise CellsegError(f"model {name} {dim}: pretrained weights are not supported")
    config["input_shape"] = _as_shape(config["input_shape"], dim, name)
    return config


def input_rule(name: str, dim: str, preset: str = "seed", **overrides: Any) -> InputRule:
    """The :class:`InputRule` (default patch, divisor, fixed shape) of a configured model."""
    entry = get_entry(name, dim)
    config = model_config(name, dim, preset, **overrides)
    return entry.input_rule(config)


def check_input_shape(
    name: str, dim: str, shape: Sequence[int], preset: str = "seed", **overrides: Any
) -> None:
    """Raise a one-line :class:`CellsegError` if the spatial ``shape`` is not accepted.

    Args:
        shape: spatial shape ``(H, W)`` or ``(D, H, W)`` in voxels; a full ``(B, C, ...)``
            tensor shape is also accepted (the first two entries are dropped).
    """
    rule = input_rule(name, dim, preset, **overrides)
    shape_error(name, dim, rule, shape)


def shape_error(name: str, dim: str, rule: InputRule, shape: Sequence[int]) -> None:
    """Raise the one-line error for ``shape`` against ``rule``; used by models' forward too."""
    spatial = tuple(int(s) for s in shape)
    n = len(rule.default)
    if len(spatial) == n + 2:
        spatial = spatial[2:]
    if rule.is_valid(spatial):
        return
    if len(spatial) != n:
        expected = "(B, C, H, W)" if n == 2 else "(B, C, D, H, W)"
        raise CellsegError(
            f"model {name} {dim}: input shape {format_shape(tuple(shape))} has the wrong number of "
            f"dimensions; expected {expected} with spatial size {rule.describe()}"
        )
    nearest = " or ".join(format_shape(s) for s in rule.nearest(spatial))
    raise CellsegError(
        f"model {name} {dim}: input spatial shape {format_shape(spatial)} is not accepted "
        f"({rule.describe()}); nearest valid: {nearest}"
    )


def _check_dim(dim: str) -> None:
    if dim not in DIMS:
        raise CellsegError(f"unknown dim {dim!r}; valid dims: {', '.join(DIMS)}")


def _as_shape(value: int | Iterable[int], dim: str, name: str) -> tuple[int, ...]:
    n = int(dim[0])
    shape = (int(value),) * n if isinstance(value, int) else tuple(int(v) for v in value)
    if len(shape) != n or any(s <= 0 for s in shape):
        raise CellsegError(
            f"model {name} {dim}: input_shape must be {n} positive ints, got {value}"
        )
    return shape


def format_shape(shape: Sequence[int]) -> str:
    """``(32, 256, 256)`` -> ``"32x256x256"``."""
    return "x".join(str(s) for s in shape)


def lcm_shape(*shapes: Sequence[int]) -> tuple[int, ...]:
    """Element-wise least common multiple, for combining divisibility constraints."""
    return tuple(math.lcm(*axis) for axis in zip(*shapes, strict=True))
