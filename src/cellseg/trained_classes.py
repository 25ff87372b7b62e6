"""Which classes a run trained on (issue 33, "training only the annotated classes").

With ``data.allow_missing_classes`` a run trains although some of the 14 classes are annotated in
no training crop: their priors are imputed and their output channels never see a label, so what
those channels predict is noise, not a trained answer. A class counts as *trained* when some
training crop annotates it (a voxel of its label known), or annotates a group label holding it
(:data:`cellseg.classes.GROUPS`): a member of a group-labelled organelle learns through the union
(:func:`cellseg.groups.group_partial_tversky`). A group is trained when one of its members is.

The set is derived once, from the annotation counts :mod:`cellseg.data.frequencies` takes over
the training crops, and recorded in ``class_frequencies.json`` (``trained_classes``), in the run's
``best.pt`` and, when some class is untrained, in ``train_summary.json``
(``untrained_classes``). Inference (:class:`cellseg.inference.Predictor`) keeps the 14-channel
head and leaves the untrained channels out: no mask, no probability, no score, no panel.

A file or checkpoint that records no set (written before this) is read as all 14 trained, which
is what it was used as. The groups whose own labels a run trained on are recorded beside it
(:func:`trained_groups`, ``best.pt``'s ``trained_groups``), for ``cellseg predict``'s group maps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cellseg.classes import CLASSES, GROUP_NAMES, GROUPS
from cellseg.errors import CellsegError

__all__ = [
    "TRAINED_GROUPS_KEY",
    "TRAINED_KEY",
    "UNTRAINED_KEY",
    "read_trained_classes",
    "stored_classes",
    "trained_classes",
    "trained_groups",
    "trained_names",
    "untrained_classes",
    "untrained_line",
]

TRAINED_KEY = "trained_classes"
"""The key of the list in ``class_frequencies.json`` and ``best.pt``."""

UNTRAINED_KEY = "untrained_classes"
"""The key of the classes left out, where an output records them only when there are any
(``train_summary.json``, a prediction store's settings, an evaluation's predictions): an output of
a run that trained all 14 stays as it was."""

TRAINED_GROUPS_KEY = "trained_groups"
"""The key of ``best.pt`` listing the groups whose labels its training crops held (absent: none,
or a checkpoint from before the key); ``cellseg predict``'s ``predict.groups: auto`` maps them."""


def trained_groups(document: Mapping[str, Any]) -> tuple[str, ...]:
    """The groups a training run learnt from labels of, in :data:`GROUP_NAMES` order: the
    ``per_group`` entries of its ``class_frequencies.json`` (written only when a training crop
    holds a group label), or a ``best.pt``'s :data:`TRAINED_GROUPS_KEY`; none in either without.
    (A group whose members are trained through their own labels only is not listed: ``predict``'s
    ``auto`` maps the groups that had labels of their own.)

    Args:
        document: the parsed ``class_frequencies.json``, or a ``best.pt`` dict.
    """
    named = set(document.get("per_group", {})) | set(document.get(TRAINED_GROUPS_KEY, ()))
    return tuple(name for name in GROUP_NAMES if name in named)


def trained_classes(annotated: Mapping[str, float]) -> tuple[str, ...]:
    """The classes trained on, in :data:`CLASSES` order.

    Args:
        annotated: label name (a class or a group of :data:`GROUPS`) → annotated voxels (or
            crops) of it over the training crops; a name absent counts as 0.

    Returns:
        every class whose own count, or the count of a group holding it, is above 0.
    """
    groups = {
        member for g, members in GROUPS.items() if annotated.get(g, 0) > 0 for member in members
    }
    return tuple(name for name in CLASSES if annotated.get(name, 0) > 0 or name in groups)


def untrained_classes(trained: Iterable[str]) -> tuple[str, ...]:
    """The classes of :data:`CLASSES` not in ``trained``, in class order."""
    trained = set(trained)
    return tuple(name for name in CLASSES if name not in trained)


def trained_names(trained: Iterable[str], names: Iterable[str]) -> list[str]:
    """``names`` (classes and groups) less the untrained: a class not in ``trained``, a group
    none of whose members is; the order kept."""
    trained = set(trained)
    return [
        name
        for name in names
        if name in trained or (name in GROUPS and any(m in trained for m in GROUPS[name]))
    ]


def untrained_line(trained: Iterable[str]) -> str | None:
    """The one line saying which classes (and groups) a run did not train, or ``None`` when it
    trained all 14."""
    trained = tuple(trained)
    missing = untrained_classes(trained)
    if not missing:
        return None
    groups = [g for g in GROUP_NAMES if not trained_names(trained, [g])]
    also = f" (groups {', '.join(groups)})" if groups else ""
    return (
        f"untrained classes: {', '.join(missing)}{also}: no training crop annotates them, nor a "
        "group label holding them; their channels are not predicted, scored or drawn"
    )


def read_trained_classes(document: Mapping[str, Any], source: str) -> tuple[str, ...]:
    """The trained classes recorded in ``document`` (``class_frequencies.json`` or a ``best.pt``
    dict) under :data:`TRAINED_KEY`; all 14 when it records none (written before the key).

    Raises:
        CellsegError: the entry is not a list of cellseg class names.
    """
    value = document.get(TRAINED_KEY)
    if value is None:
        return CLASSES
    if not isinstance(value, list | tuple) or not set(value) <= set(CLASSES):
        raise CellsegError(
            f"{source}: {TRAINED_KEY} is {value!r}, expected a list of the classes "
            f"{', '.join(CLASSES)}; recompute it with the class_frequencies rule (or retrain)"
        )
    return tuple(name for name in CLASSES if name in set(value))


def stored_classes(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The classes an output holds arrays of: all 14 less the ``untrained_classes`` its settings
    ``spec`` record (a prediction store's ``cellseg.prediction``)."""
    return tuple(name for name in CLASSES if name not in set(spec.get(UNTRAINED_KEY, ())))
