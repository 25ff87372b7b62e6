"""The z slices a model's figures draw, kept by evaluation as it predicted them
(``results/metrics/{run}.figure_slices.npz``).

Evaluation predicts every test crop in full (:mod:`cellseg.evaluation`); the ``visualize`` rule's
figures (:func:`cellseg.reporting.figures.make_model_figures`) show a few slices of them. So that
a figure shows exactly the probabilities that were scored (one answer per voxel) and no model is
loaded twice, evaluation keeps those slices while it predicts (:mod:`cellseg.evaluation_slices`)
and writes them here; the figures draw this file alone (no torch model, no GPU, no store read).

Which slices: :func:`sample_slices` (the sample rows, ``evaluation.figure_samples`` /
``figure_seed``) and the middle slice of :func:`figure_crop` (the per-class panels). Each keeps
the EM, the ground truth on the prediction grid and the first adjustment mode's probabilities of
the test-time augmentation ``inference.tta`` (:class:`FigureSlice`). The file is a NumPy ``.npz``
(compressed): ``meta`` (a JSON string, :class:`FigureSlices`' scalars and each slice's crop and
z) and per slice ``{role}{k}_em``, ``_target``, ``_probabilities`` (``role`` ``sample`` or
``classes``). Size: about ``(1 + 14 + 14 [+ groups]) × H × W`` float32 per slice before
compression (0/1/NaN truth compresses to little).

This module needs no torch: the picks and the file format only.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellseg.classes import CLASSES, GROUP_NAMES
from cellseg.errors import CellsegError
from cellseg.io import atomic_path
from cellseg.trained_classes import trained_names

__all__ = [
    "FIGURE_SLICES_FORMAT",
    "FigureSlice",
    "FigureSlices",
    "ModelFigureSettings",
    "annotated_names",
    "figure_crop",
    "read_figure_slices",
    "sample_slices",
    "write_figure_slices",
]

FIGURE_SLICES_FORMAT = 1
"""Version of the ``.npz`` layout (``meta["format"]``); a file of another is refused."""


@dataclass(frozen=True)
class ModelFigureSettings:
    """Per-model figures (the ``visualize`` rule; kept by the ``evaluate`` rule).

    Attributes:
        samples: input / ground truth / prediction rows (the seed's 3).
        seed: which crops and slices (the seed's 42).
    """

    samples: int = 3
    seed: int = 42

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> ModelFigureSettings:
        """From the config's ``evaluation`` section (``figure_samples``, ``figure_seed``)."""
        section = section or {}
        return cls(
            samples=int(section.get("figure_samples", cls.samples)),
            seed=int(section.get("figure_seed", cls.seed)),
        )


def sample_slices(
    n_crops: int, depths: Sequence[int], samples: int, seed: int
) -> list[tuple[int, int]]:
    """Which ``(crop, z slice)`` to show: distinct crops in a seeded order (middle slice first),
    cycling through them again with random slices when there are fewer crops than samples."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_crops)
    picks = []
    for k in range(samples if n_crops else 0):
        crop = int(order[k % n_crops])
        depth = depths[crop]
        z = depth // 2 if k < n_crops else int(rng.integers(depth))
        picks.append((crop, z))
    return picks


def figure_crop(
    crops: Sequence[Any],
    geometries: Sequence[Any],
    seed: int,
    trained: Sequence[str] = CLASSES,
) -> int:
    """The crop of the per-class panels: the one that annotates the most classes and groups the
    model trained (``trained``: its trained classes), ties going to the first in
    :func:`sample_slices`' seeded order (the first sample row's crop when it is among the
    richest)."""
    order = np.random.default_rng(seed).permutation(len(crops))
    return int(
        max(order, key=lambda i: len(trained_names(trained, annotated_names(geometries[i]))))
    )


def annotated_names(geometry: Any) -> list[str]:
    """The classes, then the groups, a crop annotates (the label arrays it holds)."""
    return [name for name in (*CLASSES, *GROUP_NAMES) if name in geometry.labels]


@dataclass(frozen=True)
class FigureSlice:
    """One prediction-grid z slice of a test crop, as evaluation predicted it.

    Attributes:
        crop: the crop's name (``dataset/crop``).
        z: the slice's index on the prediction grid.
        em: ``(H, W)`` float32 EM in [0, 1], as the network read it.
        target: ``(14[+groups], H, W)`` float32 ground truth on the prediction grid (nearest
            label voxel), NaN where unannotated; the group channels only for the per-class panels.
        probabilities: ``(14, H, W)`` float32 probabilities of the first adjustment mode.
    """

    crop: str
    z: int
    em: np.ndarray
    target: np.ndarray
    probabilities: np.ndarray


@dataclass(frozen=True)
class FigureSlices:
    """What one model's figures draw.

    Attributes:
        model: the run's key (``unet_2d``), the figures' titles.
        mode: the adjustment mode of the probabilities (evaluation's first).
        threshold: evaluation's threshold (the per-class panels' binarisation).
        trained_classes: the model's trained classes (:mod:`cellseg.trained_classes`).
        resolution_nm: the model's ``(z, y, x)`` voxel size, nm (the pixels' aspect).
        samples: the sample rows (:func:`sample_slices`' order).
        classes: the per-class panels' slice (:func:`figure_crop`'s middle one); ``None``
            without test crops.
        names: the classes and groups that crop annotates (:func:`annotated_names`).
    """

    model: str
    mode: str
    threshold: float
    trained_classes: tuple[str, ...]
    resolution_nm: tuple[float, float, float]
    samples: tuple[FigureSlice, ...]
    classes: FigureSlice | None = None
    names: tuple[str, ...] = ()


_ARRAYS = ("em", "target", "probabilities")


def _slices(slices: FigureSlices) -> list[tuple[str, FigureSlice]]:
    keyed = [(f"sample{k}", s) for k, s in enumerate(slices.samples)]
    return keyed + ([("classes0", slices.classes)] if slices.classes is not None else [])


def write_figure_slices(path: Path | str, slices: FigureSlices) -> None:
    """Write ``slices`` to ``path`` (``.npz``, atomically; see the module's layout)."""
    keyed = _slices(slices)
    meta = {
        "format": FIGURE_SLICES_FORMAT,
        "model": slices.model,
        "mode": slices.mode,
        "threshold": float(slices.threshold),
        "trained_classes": list(slices.trained_classes),
        "resolution_nm": [float(r) for r in slices.resolution_nm],
        "names": list(slices.names),
        "slices": {key: {"crop": s.crop, "z": int(s.z)} for key, s in keyed},
    }
    arrays = {
        f"{key}_{name}": np.asarray(getattr(s, name), dtype=np.float32)
        for key, s in keyed
        for name in _ARRAYS
    }
    with atomic_path(path) as temporary, temporary.open("wb") as stream:
        np.savez_compressed(stream, meta=np.array(json.dumps(meta)), **arrays)


def read_figure_slices(path: Path | str) -> FigureSlices:
    """Read :func:`write_figure_slices`' file.

    Raises:
        CellsegError: not such a file (unreadable, a key missing, another format), one line
            naming it and the fix (rerun the model's ``evaluate`` job).
    """
    path = Path(path)
    fix = "rerun the model's evaluate job (snakemake --forcerun evaluate), which writes it"
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != FIGURE_SLICES_FORMAT:
                raise CellsegError(
                    f"{path}: figure slices of format {meta.get('format')!r}, this cellseg reads "
                    f"{FIGURE_SLICES_FORMAT}; {fix}"
                )
            found = {
                key: FigureSlice(
                    where["crop"], int(where["z"]), *(data[f"{key}_{name}"] for name in _ARRAYS)
                )
                for key, where in meta["slices"].items()
            }
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        raise CellsegError(f"{path}: not a figure slices file ({error}); {fix}") from None
    return FigureSlices(
        meta["model"],
        meta["mode"],
        float(meta["threshold"]),
        tuple(meta["trained_classes"]),
        tuple(float(r) for r in meta["resolution_nm"]),  # type: ignore[arg-type]
        _in_order(found),
        found.get("classes0"),
        tuple(meta["names"]),
    )


def _in_order(found: Mapping[str, FigureSlice]) -> tuple[FigureSlice, ...]:
    """The sample slices in their written order (``sample0``, ``sample1``, …; ``sample10``
    after ``sample9``)."""
    keys = [k for k in found if k.startswith("sample")]
    return tuple(found[k] for k in sorted(keys, key=lambda k: int(k[len("sample") :])))
