"""A training run's log: ``train.log`` in the run directory, every attempt's, and stderr.

Snakemake clears a rule's log before a retry; ``train.log`` keeps every attempt of the run,
each starting with the settings and data it ran with (:func:`settings_text`) and numbered by
the attempts before it (:func:`attempt_number`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from cellseg.config.settings import TrainSettings, jsonable
from cellseg.data.identity import DataIdentity


def append_log(run_dir: Path, key: str, message: str) -> None:
    """``[key] message`` to stderr (the job's log) and, time-stamped, to ``train.log``."""
    line = f"[{key}] {message}"
    print(line, file=sys.stderr, flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "a") as handle:
        handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


def attempt_number(run_dir: Path) -> int:
    """This attempt's number: one more than the attempts ``train.log`` has recorded."""
    log = run_dir / "train.log"
    return 1 + (log.read_text().count("settings (config hash") if log.is_file() else 0)


def settings_text(
    settings: TrainSettings, identity: DataIdentity, datasplit: Path, class_frequencies: Path
) -> tuple[str, str]:
    """Every resolved setting (YAML) and the data the run trains on (its crops and files)."""
    text = yaml.safe_dump(jsonable(asdict(settings)), sort_keys=False)
    data = (
        f"train crops ({len(identity.train)}): {', '.join(identity.train)}\n"
        f"validate crops ({len(identity.validate)}): {', '.join(identity.validate)}\n"
        f"datasplit: {datasplit}\nclass frequencies: {class_frequencies}"
    )
    return text, data


def progress_bar(total: int, initial: int, description: str) -> Any:
    """An epoch's progress bar on a terminal (tqdm); None when stderr is not one (a job's log
    gets a line every ``log_every_steps`` instead)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=description, leave=False)
