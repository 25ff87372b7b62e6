"""The trainer's watchdogs: runs that stop themselves, and with which exit status.

* **Time** (the trainer's ``check_time``): the job's limit ends an attempt with a checkpoint and
  :data:`EXIT_TIME_BUDGET` (75): the next attempt resumes it.
* **Stalls** (:class:`StallWatch`): ``max_stalled_steps`` optimizer steps in a row that change
  nothing end the run with :data:`EXIT_STALLED` (65): the same settings would stall again.
* **Non-finite windows** (:class:`NonfiniteWatch`): an accumulation window with a NaN/Inf loss
  or gradient norm skips its update and counts as one skipped window, whatever ``grad_accum``;
  more than ``max_nonfinite_steps`` skipped windows in a row end the run with one line, after
  recording the windows (their steps and crops) in ``checkpoints/nonfinite.json``. A resumed
  attempt whose window at a recorded step, on the same crops, is non-finite again ends at once
  with one line naming the crops and :data:`EXIT_STALLED`: the data there, not chance, makes
  it, and running it again as it is would fail again.

These need no state of the training loop beyond what the trainer hands them, so they live
apart from :mod:`cellseg.training.trainer`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cellseg.errors import CellsegError
from cellseg.io import write_json_atomic

if TYPE_CHECKING:  # torch only where the trainer hands tensors over: the launcher needs none
    import torch

EXIT_TIME_BUDGET = 75
"""Exit status of a run that stopped itself to resume later (sysexits' EX_TEMPFAIL)."""

EXIT_STALLED = 65
"""Exit status of a run that stopped itself because it went nowhere: ``max_stalled_steps``
optimizer steps in a row with unchanged weights or a bit-identical loss, or a non-finite window
that recurs at the same data after a resume (sysexits' EX_DATAERR: running it again as it is
would stop again, so it is not a resume)."""

EXIT_STATUS_FILE_VARIABLE = "CELLSEG_EXIT_STATUS_FILE"
"""Environment variable naming the file in which ``cellseg train`` under ``torchrun`` leaves
its own exit status (75, 65, ...): ``torchrun`` itself exits 1 whenever a rank fails, and the
launcher (:func:`cellseg.training.launch.launch_training`) returns the rank's status instead."""


class StopForResume(Exception):
    """Raised inside the loop when the time budget or a SIGTERM asks the run to stop."""


class TrainingStalled(Exception):
    """Raised inside the loop when the run must stop for good with :data:`EXIT_STALLED`."""


def weight_fingerprint(parameters: Sequence[torch.Tensor]) -> torch.Tensor:
    """A float64 device scalar that changes whenever ``parameters`` do (their float64 sum: a
    change of one element below float32's resolution of the sum still shows)."""
    import torch

    if not parameters:
        return torch.zeros((), dtype=torch.float64)
    return sum(p.detach().sum(dtype=torch.float64) for p in parameters)  # type: ignore[return-value]


def fingerprint_parameters(network: torch.nn.Module) -> list[torch.Tensor]:
    """The first and the last weight matrices/kernels of ``network`` (what the stall watchdog
    sums; no copy of the model)."""
    weights = [p for p in network.parameters() if p.requires_grad and p.ndim > 1]
    weights = weights or [p for p in network.parameters() if p.requires_grad]
    return [weights[0], weights[-1]] if weights else []


@dataclass
class StallWatch:
    """Counts optimizer steps that change nothing: a gradient norm of exactly 0, weights
    unchanged by the previous step, or a window loss bit-identical to the previous window's.

    Attributes:
        limit: ``max_stalled_steps`` (0: off).
        in_a_row: such steps in a row so far.
        message: the line to stop with, once ``limit`` is reached ("" before).
    """

    limit: int
    in_a_row: int = 0
    message: str = ""
    last_loss: float | None = None
    last_fingerprint: float | None = None

    def update(
        self, window_loss: float, norm: float, fingerprint: float, epoch: int, step: int, kept: Path
    ) -> None:
        """Count one optimizer step (``step``: the one it leads to); ``kept``: the checkpoints."""
        reasons = []
        if norm == 0.0:
            reasons.append("gradient norm 0")
        if fingerprint == self.last_fingerprint:
            reasons.append("weights unchanged")
        if window_loss == self.last_loss:
            reasons.append(f"loss constant at {window_loss:.6g}")
        self.last_fingerprint, self.last_loss = fingerprint, window_loss
        self.in_a_row = self.in_a_row + 1 if reasons else 0
        if self.limit > 0 and self.in_a_row >= self.limit and not self.message:
            self.message = (
                f"training stalled: {self.in_a_row} optimizer steps in a row changed "
                f"nothing ({', '.join(reasons)}; epoch {epoch}, step {step}); "
                f"checkpoints kept in {kept}; check lr, the labels of the training "
                "crops and the loss settings, or raise max_stalled_steps (0: off)"
            )

    def another_rank_stalled(self, epoch: int, step: int) -> None:
        """Another rank's watchdog fired (DDP): weights and gradient norm are the same on every
        rank, so only a rank's own loss can have stalled there alone."""
        self.message = (
            f"training stalled: another rank's loss stayed constant for {self.limit} optimizer "
            f"steps (epoch {epoch}, step {step}); check the labels of the training crops and the "
            "loss settings, or raise max_stalled_steps (0: off)"
        )


NONFINITE_RECORD = "nonfinite.json"
"""The record of the skipped windows that stopped a run, in its ``checkpoints/``."""


@dataclass
class NonfiniteWatch:
    """Counts skipped accumulation windows (optimizer steps whose update a NaN/Inf loss or
    gradient norm cancelled): one per window, whatever ``grad_accum`` and however many of its
    micro-batches were non-finite, reset only by a window that updates the weights.

    Attributes:
        limit: ``max_nonfinite_steps``: skipped windows in a row tolerated.
        checkpoint_dir: where the record of a stop (:data:`NONFINITE_RECORD`) goes.
        config_hash: the run's; a record of other settings is not this run's data.
        in_a_row: skipped windows in a row now (not saved: a resume counts anew).
        streak: ``{step: crops}`` of the skipped windows in a row.
    """

    limit: int
    checkpoint_dir: Path
    config_hash: str
    in_a_row: int = 0
    streak: dict[int, list[str]] = field(default_factory=dict)

    @property
    def record_path(self) -> Path:
        return self.checkpoint_dir / NONFINITE_RECORD

    def recorded(self) -> dict[int, list[str]]:
        """``{step: crops}`` of the windows that stopped an earlier attempt of these settings."""
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(record, dict) or record.get("config_hash") != self.config_hash:
            return {}
        return {int(step): list(crops) for step, crops in (record.get("windows") or {}).items()}

    def finite(self) -> None:
        """A window that updated the weights."""
        self.in_a_row = 0
        self.streak = {}

    def skipped(
        self, step: int, epoch: int, crops: list[str], what: str, write: bool, resumed: bool
    ) -> None:
        """Count a skipped window: optimizer step ``step`` (0-based, the one it would have been)
        of ``epoch``, whose ``crops`` (every rank's, of its non-finite micro-batches) gave a
        NaN/Inf ``what`` (loss or gradient norm). ``write``: this rank writes the record;
        ``resumed``: this attempt resumed from a checkpoint.

        Raises:
            TrainingStalled: a resumed attempt's window at a recorded step, on the same crops,
                is non-finite again (the data, not chance).
            CellsegError: more than ``limit`` skipped windows in a row (recorded first).
        """
        self.in_a_row += 1
        self.streak[step] = sorted(set(crops))
        earlier = self.recorded().get(step) if resumed else None
        if earlier is not None and sorted(earlier) == self.streak[step]:
            raise TrainingStalled(
                f"the {what} was NaN/Inf again at epoch {epoch}, step {step}, after a resume, on "
                f"the same data as the attempt that stopped there (crops {', '.join(earlier)}): "
                "the data, not chance; check those crops' EM and labels (or lower training lr), "
                f"then run again (it resumes from {self.checkpoint_dir}); running it as it is "
                "would stop here again"
            )
        if self.in_a_row > self.limit:
            if write:
                write_json_atomic(
                    self.record_path,
                    {
                        "config_hash": self.config_hash,
                        "windows": {str(k): v for k, v in self.streak.items()},
                    },
                )
            first = min(self.streak)
            named = sorted({c for window in self.streak.values() for c in window})
            raise CellsegError(
                f"{what} was NaN/Inf in {self.in_a_row} accumulation windows in a row (epoch "
                f"{epoch}, steps {first}-{step}; crops {', '.join(named)}); their updates were "
                f"skipped and the last good checkpoint kept in {self.checkpoint_dir}; lower "
                "training lr or check those crops"
            )
