"""What a model was trained on: its training and validation crops and the class priors of its
loss. A checkpoint records this identity; resuming against other data and scoring a model on a
crop it saw are both refused, so a comparison can never leak test crops into training.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cellseg.classes import CLASSES
from cellseg.data.store import Crop
from cellseg.errors import CellsegError

PRIOR_RTOL = 1e-9
"""Relative tolerance of two priors to count as the same (they round-trip through JSON)."""


@dataclass(frozen=True)
class DataIdentity:
    """The data a training run used.

    Attributes:
        train: names (``dataset/cropN``, :attr:`Crop.name`) of the training crops, sorted.
        validate: names of the validation crops, sorted.
        prior: the loss's class prior ``f_c`` (positive / annotated voxels of the training
            crops), one value per class of :data:`cellseg.classes.CLASSES`.
    """

    train: tuple[str, ...]
    validate: tuple[str, ...]
    prior: tuple[float, ...]

    @classmethod
    def from_crops(
        cls, train: Iterable[Crop], validate: Iterable[Crop], prior: Sequence[float]
    ) -> DataIdentity:
        return cls(
            tuple(sorted(c.name for c in train)),
            tuple(sorted(c.name for c in validate)),
            tuple(float(p) for p in prior),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "train": list(self.train),
            "validate": list(self.validate),
            "prior": list(self.prior),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataIdentity:
        return cls(
            tuple(data["train"]), tuple(data["validate"]), tuple(float(p) for p in data["prior"])
        )

    @property
    def seen(self) -> frozenset[str]:
        """Every crop the run trained or validated on."""
        return frozenset(self.train) | frozenset(self.validate)

    def differences(self, other: DataIdentity) -> list[str]:
        """How ``other`` differs from this identity, one short phrase per part (empty: same).

        E.g. ``["train: +jrc_demo-1/crop3 -jrc_demo-2/crop7", "class priors of mito_ribo"]``.
        """
        parts = []
        for split in ("train", "validate"):
            old, new = set(getattr(self, split)), set(getattr(other, split))
            if old != new:
                added = " ".join(f"+{name}" for name in sorted(new - old))
                removed = " ".join(f"-{name}" for name in sorted(old - new))
                parts.append(f"{split}: {' '.join(filter(None, [added, removed]))}")
        if len(self.prior) != len(other.prior):
            parts.append("class priors (another number of classes)")
        else:
            changed = [
                CLASSES[c] if c < len(CLASSES) else str(c)
                for c, (a, b) in enumerate(zip(self.prior, other.prior, strict=True))
                if not math.isclose(a, b, rel_tol=PRIOR_RTOL, abs_tol=0.0)
            ]
            if changed:
                parts.append(f"class priors of {', '.join(changed)}")
        return parts


def check_unseen(identity: DataIdentity | None, crops: Iterable[Crop], source: str) -> None:
    """Refuse to score a model on crops it trained or validated on.

    Args:
        identity: the model's training data (``None``: a checkpoint from before identities were
            recorded, which cannot be checked and is refused too).
        crops: the crops about to be scored.
        source: the checkpoint's path, for the message.

    Raises:
        CellsegError: one line naming the crops the model has seen.
    """
    if identity is None:
        raise CellsegError(
            f"{source}: the checkpoint does not record which crops it was trained on, so a "
            "leak into the test crops cannot be ruled out; retrain it with this cellseg version"
        )
    leaked = sorted(c.name for c in crops if c.name in identity.seen)
    if leaked:
        raise CellsegError(
            f"{source}: the model was trained or validated on {', '.join(leaked)}, which the "
            "datasplit now lists for evaluation; retrain it on the current datasplit (delete its "
            "checkpoints directory) or restore the datasplit it was trained with"
        )
