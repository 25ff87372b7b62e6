"""Per-model training settings resolved from the workflow config, and the config hash.

Settings resolve in three layers, later winning: ``training.defaults``, ``training.2d`` or
``training.3d``, then the model's own entry under ``models`` (``{name}_{dim}``). Nothing about a
run's size (batch, GPUs, epochs, patch, learning rate) is a code constant.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cellseg.errors import CellsegError
from cellseg.mappings import deep_merge
from cellseg.voxels import Resolution, Vec3, as_vec3, parse_resolution
from cellseg.yamlfile import UniqueKeyLoader

# Keys that change how a run is executed or logged but not what it computes: editing them keeps
# the config hash, so a run can be resumed with more workers, another time budget or without the
# fault injection that made it fail.
EXECUTION_KEYS: frozenset[str] = frozenset(
    {
        "num_workers",
        "cache_mb",
        "log_every_steps",
        "checkpoint_every_steps",
        "keep_periodic_checkpoints",
        "periodic_checkpoint_every_epochs",
        "mem_mb",
        "runtime_min",
        "cpus_per_task",
        "time_budget_margin_min",
        "fail_after_steps",
        "tensorboard_images",
        "run_on_cpu",
        "max_stalled_steps",
        "data_wait_warn_fraction",
        "inject_nonfinite_grad_after_steps",
        "inject_step_delay_s",
    }
)

# Loss keys outside the hash: how validation reads the logits (it changes which epoch counts as
# best from then on, not a step's gradient) and how often the logged online estimate updates.
EXECUTION_LOSS_KEYS: frozenset[str] = frozenset(
    {"inference_logit_adjustment", "online_frequency_every"}
)


@dataclass(frozen=True)
class TrainSettings:
    """Everything one model's training run needs from the config (see config/README.md)."""

    model: str
    dim: str
    preset: str = "demo"
    architecture: Mapping[str, Any] = field(default_factory=dict)
    patch_shape: tuple[int, ...] = (64, 64)
    batch_per_gpu: int = 4
    gpus: int = 0
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    pct_start: float = 0.3
    grad_clip: float = 1.0
    max_epochs: int = 3
    iterations_per_epoch: int = 20
    validation_patches_per_crop: int = 4
    validation_batch_size: int = 4
    early_stopping_patience: int = 20
    early_stopping_min_delta: float = 1e-4
    checkpoint_every_steps: int = 50
    keep_periodic_checkpoints: int = 3
    periodic_checkpoint_every_epochs: int = 10
    num_workers: int = 0
    cache_mb: float = 256.0
    amp: bool = True
    tf32: bool = True
    compile: bool = False
    seed: int = 42
    log_every_steps: int = 10
    max_nonfinite_steps: int = 10
    rare_class_boost: float = 0.0
    output_bias_init: str = "prior"
    augmentation: Mapping[str, float] = field(default_factory=dict)
    tensorboard_images: int = 2
    mem_mb: int = 4000
    runtime_min: int = 60
    cpus_per_task: int = 2
    time_budget_margin_min: float = 10.0
    fail_after_steps: int | None = None
    # GPU-configured settings (gpus > 0) run as gpus CPU processes (gloo) instead: the rehearsal
    # and the tests on machines without a GPU; never implied (see trainer.training_device)
    run_on_cpu: bool = False
    # optimizer steps in a row with unchanged weights or a bit-identical loss before the run
    # stops itself (exit status EXIT_STALLED); 0 disables
    max_stalled_steps: int = 200
    # share of an epoch's training time spent waiting for the loader above which the log warns
    data_wait_warn_fraction: float = 0.2
    # fault injection for tests: NaN gradients (finite losses) from this optimizer step on
    inject_nonfinite_grad_after_steps: int | None = None
    # fault injection for tests: each optimizer step also sleeps this long (a slow node), so
    # a run's length has a floor whatever the machine's speed
    inject_step_delay_s: float = 0.0
    # data and loss, copied from the config's data and loss sections
    # the config's spelling (cellseg.voxels.compact: one number when isotropic, so isotropic
    # configs hash as before); the (z, y, x) voxel size is voxel_nm
    resolution_nm: Resolution = 8.0
    em_range: tuple[float, float] = (10.6, 194.1)
    infer_true_negatives: bool = False
    loss: Mapping[str, Any] = field(default_factory=dict)
    # where the weights start (cellseg.training.init): "scratch" (the library's initialisation),
    # "imagenet" (timm's weights of a 2D encoder) or {"checkpoint": PATH}
    init: str | Mapping[str, str] = "scratch"

    @property
    def key(self) -> str:
        return f"{self.model}_{self.dim}"

    @property
    def voxel_nm(self) -> Vec3:
        """The ``(z, y, x)`` voxel size the model sees, nm."""
        return as_vec3(self.resolution_nm)

    @property
    def is_3d(self) -> bool:
        return self.dim == "3d"

    def result_dict(self) -> dict[str, Any]:
        """The settings that determine the trained weights (hashed into checkpoints)."""
        result = {k: v for k, v in jsonable(asdict(self)).items() if k not in EXECUTION_KEYS}
        result["loss"] = {
            k: v for k, v in result.get("loss", {}).items() if k not in EXECUTION_LOSS_KEYS
        }
        # no BCE term is the loss runs trained before the key existed: the same hash
        if not result["loss"].get("bce_weight", 0):
            result["loss"].pop("bce_weight", None)
        # a scratch start is what every run did before the key existed: the same hash
        if result.get("init") == "scratch":
            result.pop("init")
        return result

    @property
    def init_checkpoint(self) -> str | None:
        """The weights file the run starts from (``init: {checkpoint: PATH}``), else None."""
        return self.init.get("checkpoint") if isinstance(self.init, Mapping) else None

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.result_dict(), sort_keys=True).encode()).hexdigest()[
            :16
        ]


def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists and mapping keys as strings (YAML- and JSON-safe)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


RUN_SEPARATOR = "~"
"""Separates a run name's parts: ``{model}_{dim}[~{variant}][~r{k}]``."""

VARIANT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9.+-]*$")
"""A variant name: a letter, then letters, digits, ``.``, ``+``, ``-`` (no ``_``, no ``~``), and
not ``r`` followed by digits only (that is a replicate's suffix)."""

_REPLICATE = re.compile(r"^r([0-9]+)$")


@dataclass(frozen=True)
class Run:
    """One training job of the DAG: a model, a loss/training variant and a replicate.

    Its name is ``{model}_{dim}``, then ``~{variant}`` when the config has ``variants``, then
    ``~r{k}`` for replicate ``k >= 1``. Replicate 0 of the variant-free run is the plain
    ``{model}_{dim}``: today's paths stay, and going from 1 to N replicates retrains nothing.
    """

    model_key: str
    variant: str = ""
    replicate: int = 0

    @property
    def name(self) -> str:
        parts = [self.model_key]
        if self.variant:
            parts.append(self.variant)
        if self.replicate:
            parts.append(f"r{self.replicate}")
        return RUN_SEPARATOR.join(parts)

    @property
    def group(self) -> str:
        """``{model}_{dim}[~{variant}]``: the runs the summary aggregates over seeds."""
        return Run(self.model_key, self.variant).name

    @classmethod
    def parse(cls, name: str) -> Run:
        """The run of a name made by :attr:`name`."""
        model_key, *rest = name.split(RUN_SEPARATOR)
        variant, replicate = "", 0
        if rest and (match := _REPLICATE.match(rest[-1])):
            replicate = int(match.group(1))
            rest = rest[:-1]
        if len(rest) > 1:
            raise CellsegError(f"{name}: not a run name ({{model}}_{{dim}}[~variant][~rK])")
        if rest:
            variant = rest[0]
        return cls(model_key, variant, replicate)


def check_variant_name(name: str, source: str = "config") -> None:
    """Raise a one-line :class:`CellsegError` for a variant name a run name cannot hold."""
    if not VARIANT_NAME.match(name) or _REPLICATE.match(name):
        raise CellsegError(
            f"{source}: variants.{name}: a variant name is a letter then letters, digits, '.', "
            "'+' or '-' (no '_', not r<digits>); rename it"
        )


def runs(config: Mapping[str, Any], source: str = "config") -> list[Run]:
    """Every training job of the config: ``models`` (only those in ``select_models`` when it
    names any) x ``variants`` (or the variant-free run when there are none) x ``replicates``,
    in that order.

    Raises:
        CellsegError: ``select_models`` names a model that ``models`` does not configure.
    """
    models = list(config.get("models", {}))
    selected = list(config.get("select_models") or [])
    unknown = [key for key in selected if key not in models]
    if unknown:
        raise CellsegError(
            f"{source}: select_models names {', '.join(unknown)}, not under models "
            f"({', '.join(models)}); configure it or remove it"
        )
    variants = list(config.get("variants") or {}) or [""]
    count = int(config.get("replicates", 1) or 1)
    return [
        Run(model_key, variant, k)
        for model_key in (selected or models)
        for variant in variants
        for k in range(count)
    ]


def run_config(config: Mapping[str, Any], run: Run | str, source: str = "config") -> dict[str, Any]:
    """A copy of ``config`` in which model ``run.model_key`` resolves to the run's settings.

    The variant's ``training`` overrides apply after the model's entry and its ``loss`` merges
    into ``loss``; replicate ``k`` trains with seed ``training seed + k``. The variant-free
    replicate 0 gets ``config`` unchanged (its settings, hash and resources are today's). The
    training job reads this copy (``workflow_config.yaml`` in its run directory) under the plain
    ``{model}_{dim}`` key.

    Raises:
        CellsegError: the variant is not configured.
    """
    run = Run.parse(run) if isinstance(run, str) else run
    if not run.variant and not run.replicate:
        return dict(config)
    variants = config.get("variants") or {}
    if run.variant and run.variant not in variants:
        raise CellsegError(
            f"{source}: variants.{run.variant} is not configured; configured: "
            f"{', '.join(variants) or 'none'}"
        )
    overrides = (variants.get(run.variant) or {}) if run.variant else {}
    models = config.get("models", {})
    entry = deep_merge(models.get(run.model_key) or {}, overrides.get("training") or {})
    if run.replicate:
        base = _resolve(config, run.model_key, source).seed if run.model_key in models else 0
        seed = int(entry.get("seed", base))
        entry["seed"] = seed + run.replicate
    derived = {
        k: v for k, v in config.items() if k not in ("variants", "replicates", "select_models")
    }
    derived["models"] = {**models, run.model_key: entry} if run.model_key in models else models
    derived["loss"] = deep_merge(config.get("loss") or {}, overrides.get("loss") or {})
    return derived


def resolve_settings(
    config: Mapping[str, Any], model_key: str, source: str = "config"
) -> TrainSettings:
    """Resolve the settings of model ``{name}_{dim}``, or of a run ``{name}_{dim}~{variant}~rK``
    (:class:`Run`, :func:`run_config`), from a workflow config.

    Raises:
        CellsegError: the model is not listed under ``models``, the variant is not configured or
            a key is unknown.
    """
    run = Run.parse(model_key)
    if run.variant or run.replicate:
        return _resolve(run_config(config, run, source), run.model_key, source)
    return _resolve(config, model_key, source)


def _resolve(config: Mapping[str, Any], model_key: str, source: str) -> TrainSettings:
    models = config.get("models", {})
    if model_key not in models:
        raise CellsegError(
            f"{source}: models.{model_key} is not configured; configured: {', '.join(models) or 'none'}"
        )
    name, _, dim = model_key.rpartition("_")
    training = config.get("training", {})
    merged: dict[str, Any] = {}
    for layer in (training.get("defaults", {}), training.get(dim, {}), models[model_key] or {}):
        merged = deep_merge(merged, layer)
    known = {f.name for f in fields(TrainSettings)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise CellsegError(
            f"{source}: unknown training key(s) {', '.join(unknown)} for {model_key}; "
            "see config/README.md for the valid keys"
        )
    if "init" in merged:
        merged["init"] = check_init(merged["init"], f"{source}: {model_key}")
    data = config.get("data", {})
    tuples = {"patch_shape", "betas", "em_range"}
    merged = {k: tuple(v) if k in tuples else v for k, v in merged.items()}
    return TrainSettings(
        model=name,
        dim=dim,
        resolution_nm=parse_resolution(
            data.get("resolution_nm", TrainSettings.resolution_nm), f"{source}: data.resolution_nm"
        ),
        em_range=tuple(data.get("em_range", TrainSettings.em_range)),
        infer_true_negatives=bool(
            data.get("infer_true_negatives", TrainSettings.infer_true_negatives)
        ),
        loss=dict(config.get("loss", {})),
        **merged,
    )


INIT_NAMES: tuple[str, ...] = ("scratch", "imagenet")
"""The named values of ``init``; the other one is ``{checkpoint: PATH}``."""


def check_init(value: Any, where: str) -> str | dict[str, str]:
    """``init`` as the settings hold it: ``"scratch"``, ``"imagenet"`` or
    ``{"checkpoint": PATH}`` (the path as given, relative to the working directory).

    Raises:
        CellsegError: any other value (one line naming ``where`` and the valid forms).
    """
    if isinstance(value, str) and value in INIT_NAMES:
        return value
    if isinstance(value, Mapping) and set(value) == {"checkpoint"}:
        path = value["checkpoint"]
        if isinstance(path, str) and path.strip():
            return {"checkpoint": path}
    raise CellsegError(
        f"{where}: init: {value!r} is not scratch, imagenet or {{checkpoint: PATH}}; "
        "set one of those"
    )


def load_config(path: Path | str) -> dict[str, Any]:
    """Read a YAML config file (a workflow config or the resolved copy a run saves)."""
    path = Path(path)
    if not path.is_file():
        raise CellsegError(f"{path}: config file not found")
    try:
        # a key given twice is refused (yaml.safe_load would keep the last one silently)
        config = yaml.load(path.read_text(), Loader=UniqueKeyLoader) or {}
    except yaml.YAMLError as error:
        raise CellsegError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise CellsegError(f"{path}: expected a mapping at the top level")
    return config


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested settings dicts."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys
