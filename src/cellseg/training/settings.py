"""Per-model training settings resolved from the workflow config, and the config hash.

Settings resolve in three layers, later winning: ``training.defaults``, ``training.2d`` or
``training.3d``, then the model's own entry under ``models`` (``{name}_{dim}``). Nothing about a
run's size (batch, GPUs, epochs, patch, learning rate) is a code constant.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cellseg.config import deep_merge
from cellseg.errors import CellsegError

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
    # data and loss, copied from the config's data and loss sections
    resolution_nm: float = 8.0
    em_range: tuple[float, float] = (10.6, 194.1)
    infer_true_negatives: bool = False
    loss: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.model}_{self.dim}"

    @property
    def is_3d(self) -> bool:
        return self.dim == "3d"

    def result_dict(self) -> dict[str, Any]:
        """The settings that determine the trained weights (hashed into checkpoints)."""
        result = {k: v for k, v in jsonable(asdict(self)).items() if k not in EXECUTION_KEYS}
        result["loss"] = {
            k: v for k, v in result.get("loss", {}).items() if k not in EXECUTION_LOSS_KEYS
        }
        return result

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


def resolve_settings(
    config: Mapping[str, Any], model_key: str, source: str = "config"
) -> TrainSettings:
    """Resolve the settings of model ``{name}_{dim}`` from a workflow config.

    Raises:
        CellsegError: the model is not listed under ``models`` or a key is unknown.
    """
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
    data = config.get("data", {})
    tuples = {"patch_shape", "betas", "em_range"}
    merged = {k: tuple(v) if k in tuples else v for k, v in merged.items()}
    return TrainSettings(
        model=name,
        dim=dim,
        resolution_nm=float(data.get("resolution_nm", TrainSettings.resolution_nm)),
        em_range=tuple(data.get("em_range", TrainSettings.em_range)),
        infer_true_negatives=bool(
            data.get("infer_true_negatives", TrainSettings.infer_true_negatives)
        ),
        loss=dict(config.get("loss", {})),
        **merged,
    )


def load_config(path: Path | str) -> dict[str, Any]:
    """Read a YAML config file (a workflow config or the resolved copy a run saves)."""
    path = Path(path)
    if not path.is_file():
        raise CellsegError(f"{path}: config file not found")
    try:
        config = yaml.safe_load(path.read_text()) or {}
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
