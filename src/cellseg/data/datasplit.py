"""The datasplit CSV: which crops train, validate and test (cellmap-data's 5-column format).

Each row is ``split, EM store, EM group, label store, crop group/[class,…]``, every field quoted,
no header. cellmap-data knows ``train`` and ``validate``; cellseg adds ``test`` in the same first
column for the held-out crops of the final evaluation (a cellmap-data reader given this file
should be given only the train/validate rows).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np
import zarr

from cellseg.classes import CLASSES, GROUP_NAMES
from cellseg.data.multiscale import open_group
from cellseg.data.split_units import SPLIT_BY, leakage_problems, place_crops, split_units
from cellseg.data.store import (
    Crop,
    check_outside_stores,
    crop_resolution_problem,
    discover_crops,
    parse_label_path,
    read_crop_geometry,
)
from cellseg.data.voxel_checks import check_em_values, check_label_data
from cellseg.errors import CellsegError
from cellseg.io import write_text_atomic
from cellseg.voxels import Resolution, resolution_argument

SPLITS: tuple[str, ...] = ("train", "validate", "test")
EM_RANGE: tuple[float, float] = (10.6, 194.1)
"""The seed's ``data.em_range``: raw 8-bit EM values clipped to before scaling to [0, 1]."""


def split_crops(
    crops: Sequence[Crop],
    validate_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
    units: Sequence[Sequence[int]] | None = None,
) -> list[Crop]:
    """Assign each crop to train / validate / test, stratified by class, deterministic for ``seed``.

    ``units`` (indexes into ``crops``; :func:`cellseg.data.split_units.split_units`) are assigned
    whole: crops that share voxels or data, or whole datasets, never straddle two splits. Without
    ``units`` every crop is a unit of its own. With ``n`` crops a split of fraction ``f > 0``
    gets about ``round(f * n)`` crops (at least one unit while at least three crops remain for
    training). The test split is drawn first, then validation, each from the units still in
    train, in two passes:

    1. **Cover the classes.** While some class annotated by a training crop is not yet annotated
       in the split, take the unit that adds the most such classes, each weighted by
       ``1 / (crops annotating it)`` so that rare classes are covered first; ties go to a seeded
       random order of the units. This pass may take crops beyond ``round(f * n)``, but only
       units that add a class the split lacks, so the split covers every class whenever the
       data allows.
    2. **Fill** the rest in the seeded random order: a unit is taken when that brings the
       split's crop count nearer ``round(f * n)`` (or when the split is still empty).

    Both passes skip a unit whose removal would leave one of its classes annotated by no
    training crop: every class stays in train. A class annotated by only two crops (in two
    units) therefore reaches train and test but not validation, and one annotated by a single
    unit only train. With one crop per unit this is the split by crop of earlier versions,
    crop for crop.

    Returns:
        The crops with ``split`` set, in their input order.
    """
    for name, fraction in (
        ("validate_fraction", validate_fraction),
        ("test_fraction", test_fraction),
    ):
        if not 0.0 <= fraction < 1.0:
            raise CellsegError(f"{name} = {fraction}: must be in [0, 1)")
    if validate_fraction + test_fraction >= 1.0:
        raise CellsegError("validate_fraction + test_fraction must leave crops for training (< 1)")
    n = len(crops)
    if units is None:
        units = [[index] for index in range(n)]
    if sorted(index for unit in units for index in unit) != list(range(n)):
        raise ValueError("units must hold every crop index exactly once")

    def wanted(fraction: float) -> int:
        return 0 if fraction == 0 else max(round(fraction * n), 1 if n >= 3 else 0)

    order = [int(i) for i in np.random.default_rng(seed).permutation(len(units))]
    unit_classes = [Counter(c for i in unit for c in set(crops[i].classes)) for unit in units]
    annotating = Counter(name for crop in crops for name in set(crop.classes))
    train_counts = Counter(annotating)
    splits = ["train"] * len(units)

    def removable(u: int) -> bool:
        return splits[u] == "train" and all(train_counts[c] > k for c, k in unit_classes[u].items())

    def take(u: int, split: str) -> None:
        splits[u] = split
        train_counts.subtract(unit_classes[u])

    for split, count in (("test", wanted(test_fraction)), ("validate", wanted(validate_fraction))):
        if count == 0:
            continue
        covered: set[str] = set()
        taken = 0
        while True:
            best, best_gain = -1, 0.0
            for u in order:  # the first of equal gains in the seeded order wins
                if not removable(u):
                    continue
                gain = sum(1.0 / annotating[c] for c in set(unit_classes[u]) - covered)
                if gain > best_gain + 1e-12:
                    best, best_gain = u, gain
            if best < 0:
                break
            take(best, split)
            covered.update(unit_classes[best])
            taken += len(units[best])
        for u in order:
            if taken >= count:
                break
            size = len(units[u])
            if removable(u) and (taken == 0 or abs(taken + size - count) < count - taken):
                take(u, split)
                taken += size
    by_crop = {index: splits[u] for u, unit in enumerate(units) for index in unit}
    return [
        Crop(c.em_store, c.em_group, c.label_store, c.crop_group, c.classes, by_crop[index])
        for index, c in enumerate(crops)
    ]


def format_datasplit(crops: Sequence[Crop]) -> str:
    """The CSV text of ``crops`` (absolute store paths)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    for crop in crops:
        writer.writerow(
            [
                crop.split,
                str(crop.em_store.resolve()),
                crop.em_group,
                str(crop.label_store.resolve()),
                crop.label_path,
            ]
        )
    return buffer.getvalue()


def write_datasplit(crops: Sequence[Crop], path: Path | str) -> None:
    """Write the datasplit CSV atomically."""
    write_text_atomic(path, format_datasplit(crops))


def read_datasplit(path: Path | str, splits: Sequence[str] | None = None) -> list[Crop]:
    """Read and validate a datasplit CSV; optionally keep only some splits.

    Every row is checked, and the split as a whole (:func:`split_problems`: a crop listed twice,
    in one split or in two, two crops with one name), before anything is returned; all problems
    are reported at once, one ``file:row`` line each.

    Raises:
        CellsegError: naming the file, row and column for a wrong column count, an unknown
            split, a label path without a ``[class,…]`` list, an unknown class name, a store
            path that does not exist or is no zarr store, an EM, crop or class group missing
            from its store, or a whole-split problem; one line per problem.
    """
    return [crop for _, crop in _datasplit_rows(Path(path), splits)]


def _datasplit_rows(path: Path, splits: Sequence[str] | None) -> list[tuple[str, Crop]]:
    """:func:`read_datasplit`'s checked ``(file:row, crop)`` rows of ``splits``."""
    rows, problems, _ = _read_rows(path)
    problems += split_problems(rows)
    if problems:
        raise CellsegError(problem_lines(path, problems))
    kept = [(where, crop) for where, crop in rows if splits is None or crop.split in splits]
    if not kept:
        wanted = ", ".join(splits) if splits else "any split"
        raise CellsegError(f"{path}: no rows for {wanted}")
    return kept


def read_scored_crops(
    path: Path | str, splits: Sequence[str] | None = None, log: TextIO | None = None
) -> list[Crop]:
    """:func:`read_datasplit`'s crops of ``splits``, their labels checked as the ``datasplit``
    step checks them (:func:`check_label_data`: a lost chunk, values outside the encoding, a
    0/255 mask) at the level scoring reads (each class's finest), for a CSV that never went
    through ``cellseg datasplit`` or data changed since. Notes go to ``log`` (stderr).

    Raises:
        CellsegError: :func:`read_datasplit`'s problems, or the labels', one ``file:row`` line
            each.
    """
    path = Path(path)
    rows = _datasplit_rows(path, splits)
    problems: list[str] = []
    for where, crop in rows:
        try:
            geometry = read_crop_geometry(crop)
            finest = {name: (multiscale.finest,) for name, multiscale in geometry.labels.items()}
            for note in check_label_data(geometry, finest):
                print(f"{where}: {note}", file=log or sys.stderr)
        except CellsegError as error:
            _add_problem(problems, where, error)
    if problems:
        raise CellsegError(problem_lines(path, problems))
    return [crop for _, crop in rows]


MAX_PROBLEM_LINES = 50
"""Problems listed in one error; the rest are counted (a CSV of 1000 broken rows is one mistake)."""


def problem_lines(path: Path | str, problems: Sequence[str]) -> str:
    """One problem as its own line; several as a count line, then one line each (capped)."""
    if len(problems) == 1:
        return problems[0]

    def row(line: str) -> float:
        """The row number of a ``file:row: …`` line (others last, in their order)."""
        number = line.removeprefix(f"{path}:").split(":", 1)[0]
        return int(number) if line.startswith(f"{path}:") and number.isdigit() else math.inf

    shown = sorted(problems, key=row)[:MAX_PROBLEM_LINES]
    if len(problems) > MAX_PROBLEM_LINES:
        shown.append(f"… and {len(problems) - MAX_PROBLEM_LINES} more")
    return f"{path}: {len(problems)} problems, one per line:\n" + "\n".join(shown)


def _read_rows(path: Path) -> tuple[list[tuple[str, Crop]], list[str], set[str]]:
    """``([(file:row, crop)], problems, splits)`` of every row of a datasplit CSV, each row
    checked (:func:`_check_row`); a bad row is a problem line, not a crop. Rows written with
    backslashes are one problem line for the file (:func:`backslash_line`), and ``splits`` are
    the splits they mark (a split whose rows all have Windows paths is not also "missing")."""
    if not path.is_file():
        raise CellsegError(
            f"{path}: datasplit CSV not found; run `cellseg datasplit` or fix the path"
        )
    rows, problems = [], []
    roots: dict[str, zarr.Group] = {}
    backslashed: list[tuple[int, int, str]] = []  # (row, column, field) of Windows paths
    marked: set[str] = set()  # the splits of those rows
    count = 0
    # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark, which plain utf-8
    # would read into the first field ('\ufeff"train"'); without one it reads as utf-8
    with open(path, newline="", encoding="utf-8-sig") as handle:
        for row_number, row in enumerate(csv.reader(handle), start=1):
            if not row or all(not field.strip() for field in row):
                continue
            count += 1
            where = f"{path}:{row_number}"
            column = next((i for i, field in enumerate(row[1:], start=2) if "\\" in field), 0)
            if column:  # said once for the file below, not once per row and column
                backslashed.append((row_number, column, row[column - 1].strip()))
                marked.add(row[0].strip())
                continue
            try:
                rows.append((where, _parse_row(where, row, roots)))
            except CellsegError as error:
                problems.append(str(error))
    if backslashed:
        problems.append(backslash_line(path, backslashed, count))
    return rows, problems, marked


def backslash_line(path: Path, backslashed: Sequence[tuple[int, int, str]], count: int) -> str:
    """The one line for the rows of a datasplit CSV written with Windows paths (backslashes):
    cellseg splits the crop path at ``/``, so ``recon-1\\labels\\…\\crop1\\[ecs]`` has no
    ``[classes]`` and ``C:\\data\\x.zarr`` no store; ``backslashed`` holds ``(row, first
    column with a backslash, its text)``; ``count`` is the file's number of (non-blank) rows."""
    numbers = [number for number, _, _ in backslashed]
    spans: list[list[int]] = []
    for number in numbers:
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    listed = ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in spans[:5])
    listed += ", …" if len(spans) > 5 else ""
    row_number, column, field = backslashed[0]
    return (
        f"{path}: {'row' if len(numbers) == 1 else 'rows'} {listed} ({len(numbers)} of {count}) "
        f'write paths with backslashes (Windows), e.g. row {row_number} column {column} "{field}"; '
        "cellseg reads / as the separator, so they name no store, crop or [classes]: write the "
        "paths with forward slashes (\\ → /), as they are on the machine that runs cellseg"
    )


def _parse_row(where: str, row: Sequence[str], roots: dict[str, zarr.Group]) -> Crop:
    """One datasplit row as a :class:`Crop`, checked (``where`` is ``file:row``)."""
    if len(row) != 5:
        raise CellsegError(
            f"{where}: expected 5 columns (split, EM store, EM group, label store, "
            f"crop/[classes]), got {len(row)}"
        )
    split, em_store, em_group, label_store, label_path = (field.strip() for field in row)
    if split not in SPLITS:
        raise CellsegError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    crop_group, classes = parse_label_path(label_path)
    if not classes:
        raise CellsegError(f"{where}: label path {label_path!r} must end in /[class1,class2,…]")
    for store in (em_store, label_store):
        if not Path(store).exists():
            raise CellsegError(f"{where}: store {store} does not exist; fix the path in the CSV")
    _check_row(where, em_store, em_group, label_store, crop_group, classes, roots)
    return Crop(Path(em_store), em_group, Path(label_store), crop_group, classes, split)


def split_problems(rows: Sequence[tuple[str, Crop]]) -> list[str]:
    """Problems of a split as a whole, one line each, prefixed by each row's ``where``.

    * a crop (label store and crop group; paths resolved) listed twice in one split would be
      counted twice (its classes' priors shift, its metrics weigh double);
    * a crop in two splits would be trained or validated on and then scored;
    * two different crops with one name (``dataset/cropN``: two stores of one dataset name)
      would overwrite each other's metrics and predictions, which are keyed by that name.
    """
    problems = []
    first: dict[tuple[Path, str], tuple[str, Crop]] = {}
    named: dict[str, tuple[str, Crop]] = {}
    for where, crop in rows:
        key = (crop.label_store.resolve(), crop.crop_group)
        if key in first:
            where_before, before = first[key]
            if before.split == crop.split:
                problems.append(
                    f"{where}: crop {crop.name} is listed again ({crop.split}; first at "
                    f"{where_before}); it would be counted twice: delete one row"
                )
            else:
                problems.append(
                    f"{where}: crop {crop.name} is in {crop.split} here and in {before.split} "
                    f"at {where_before}; a crop belongs to one split (a model must never be "
                    "scored on a crop it trained or validated on): keep one row"
                )
            continue
        first[key] = (where, crop)
        if crop.name in named:
            where_before, before = named[crop.name]
            problems.append(
                f"{where}: crop name {crop.name} (store {crop.label_store}) is also the name of "
                f"{where_before}'s crop (store {before.label_store}); metrics and predictions "
                "are keyed by dataset/crop: give the datasets different names"
            )
        else:
            named[crop.name] = (where, crop)
    return problems


def _check_row(
    where: str,
    em_store: str,
    em_group: str,
    label_store: str,
    crop_group: str,
    classes: Sequence[str],
    roots: dict[str, zarr.Group],
) -> None:
    """One datasplit row's class names and groups (``where`` is ``file:row``); stores opened
    once each (``roots`` caches them, read-only)."""
    # group labels (whole organelles) are read too (issue 33 item 2)
    unknown = [name for name in classes if name not in CLASSES and name not in GROUP_NAMES]
    if unknown:
        raise CellsegError(
            f"{where}: column 5 (crop/[classes]) names unknown class(es) {', '.join(unknown)}; "
            f"use the CellMap names: {', '.join(CLASSES)} (groups: {', '.join(GROUP_NAMES)})"
        )
    repeated = sorted(name for name, count in Counter(classes).items() if count > 1)
    if repeated:  # a class listed twice would be counted twice in the class frequencies
        raise CellsegError(
            f"{where}: column 5 (crop/[classes]) lists {', '.join(repeated)} more than once; "
            "list each class once"
        )

    def has_group(store: str, group: str) -> bool:
        if store not in roots:
            try:
                roots[store] = open_group(store)
            except CellsegError as error:
                raise CellsegError(f"{where}: {error}") from None
        try:
            return isinstance(roots[store][group], zarr.Group)
        except KeyError:
            return False

    if not has_group(em_store, em_group):
        raise CellsegError(
            f"{where}: column 3 (EM group) {em_group!r} is not a group of {em_store}; fix the "
            "EM group (CellMap's is recon-1/em/fibsem-uint8)"
        )
    if not has_group(label_store, crop_group):
        raise CellsegError(
            f"{where}: column 5 (crop/[classes]) crop group {crop_group!r} is not a group of "
            f"{label_store}; fix the crop path or the label store in column 4"
        )
    missing = [name for name in classes if not has_group(label_store, f"{crop_group}/{name}")]
    if missing:
        raise CellsegError(
            f"{where}: column 5 (crop/[classes]) lists {', '.join(missing)}, but "
            f"{label_store}/{crop_group} has no such group; list only the classes the crop "
            "annotates"
        )


def make_datasplit(
    roots: Sequence[Path | str],
    validate_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
    resolution_nm: Resolution | None = None,
    log: TextIO | None = None,
    margin_nm: float = 0.0,
    split_by: str = "crop",
) -> list[Crop]:
    """Discover every crop under the data roots (CellMap layout) and split them by split unit.

    With ``resolution_nm``, a crop whose labels have no level within a factor of 2 of it (a
    32 nm crop for an 8 nm model) is left out, one line each on ``log`` (stderr by default), as
    the CellMap challenge's ``make-datasplit --scale`` leaves out crops coarser than its scale.
    The crops left are placed in nm and grouped into split units
    (:mod:`cellseg.data.split_units`: crops of one EM, copies included, whose boxes overlap,
    touch or lie within ``margin_nm``; whole datasets with ``split_by="dataset"``), which
    :func:`split_crops` assigns whole.

    Raises:
        CellsegError: a crop that cannot be read or placed (every one listed); with
            ``split_by="dataset"``, fewer datasets than train and the held-out splits need.
    """
    crops = [crop for root in roots for crop in discover_crops(root, log)]
    if resolution_nm is not None:
        kept, problems = [], []
        for crop in crops:
            try:
                problem = crop_resolution_problem(crop, resolution_nm)
            except CellsegError as error:  # every broken crop is listed, not only the first
                _add_problem(problems, crop.name, error)
                continue
            if problem:
                print(f"left out {crop.name}: {problem}", file=log or sys.stderr)
            else:
                kept.append(crop)
        if problems:
            raise CellsegError(problem_lines(", ".join(map(str, roots)), problems))
        crops = kept
    if not crops:
        raise CellsegError(f"no usable annotated crops under {', '.join(map(str, roots))}")
    placed, problems = place_crops(crops)
    if problems:
        raise CellsegError(problem_lines(", ".join(map(str, roots)), problems))
    boxes = [box for box in placed if box is not None]
    units = split_units(boxes, margin_nm, split_by)
    splits = ["train"] + [
        split
        for split, fraction in (("validate", validate_fraction), ("test", test_fraction))
        if fraction > 0
    ]
    if split_by == "dataset" and len(units) < len(splits):
        names = sorted({crops[unit[0]].label_store.stem for unit in units})
        raise CellsegError(
            f"{', '.join(map(str, roots))}: data.split_by is dataset (whole datasets held out), "
            f"but the crops are of {len(units)} dataset(s) ({', '.join(names)}; a copy of a "
            f"dataset counts as that dataset), and {', '.join(splits[:-1])} and {splits[-1]} "
            f"need {len(splits)}: add datasets, or set data.split_by: crop"
        )
    if split_by == "crop":
        for unit in units:
            if len(unit) > 1:
                print(
                    f"one split unit: {', '.join(crops[i].name for i in unit)} (crops of one EM, "
                    "copies included, whose boxes overlap, touch or lie within "
                    f"data.split_margin_nm = {margin_nm:g} nm share a split)",
                    file=log or sys.stderr,
                )
    return split_crops(crops, validate_fraction, test_fraction, seed, units)


def data_problems(
    rows: Sequence[tuple[str, Crop]],
    resolution_nm: Resolution | None = None,
    log: TextIO | None = None,
    em_range: Sequence[float] = EM_RANGE,
) -> list[str]:
    """Problems of each crop's data that would be trained on or scored wrongly, one line each
    prefixed by the row's ``where``: its geometry (:func:`read_crop_geometry`: EM dtype, class
    boxes, levels, placement, a level near ``resolution_nm``), float EM off the scale of
    ``em_range`` (:func:`check_em_values`, once per EM) and its label values and chunks
    (:func:`check_label_data`), at the levels that will be read: the one nearest
    ``resolution_nm`` (training, validation) and the finest (evaluation); every level without
    ``resolution_nm``. Notes about a few stray label values go to ``log`` (stderr by default).
    """
    problems = []
    em_checked: set[str] = set()
    for where, crop in rows:
        try:
            geometry = read_crop_geometry(crop, resolution_nm)
            if geometry.em.location not in em_checked:
                em_checked.add(geometry.em.location)
                check_em_values(geometry.em, em_range)
            levels = {
                name: (
                    multiscale.levels
                    if resolution_nm is None
                    else (multiscale.level_for(resolution_nm), multiscale.finest)
                )
                for name, multiscale in geometry.labels.items()
            }
            for note in check_label_data(geometry, levels):
                print(f"{where}: {note}", file=log or sys.stderr)
        except CellsegError as error:
            _add_problem(problems, where, error)
    return problems


def _add_problem(problems: list[str], where: str, error: CellsegError) -> None:
    """Append ``where: error`` unless another crop already reported the same line (crops of one
    store share its EM: a uint16 EM is one problem, not one per crop)."""
    if not any(line.endswith(f": {error}") for line in problems):
        problems.append(f"{where}: {error}")


def missing_splits(crops: Sequence[Crop]) -> list[str]:
    """The splits of :data:`SPLITS` with no crop: the workflow trains on train, stops early on
    validate and scores test, so each needs at least one."""
    present = {crop.split for crop in crops}
    return [split for split in SPLITS if split not in present]


def check_datasplit(
    path: Path | str,
    resolution_nm: Resolution | None = None,
    log: TextIO | None = None,
    margin_nm: float = 0.0,
    split_by: str = "crop",
    em_range: Sequence[float] = EM_RANGE,
) -> list[Crop]:
    """A user's datasplit CSV checked as a whole, as the workflow's ``datasplit`` step does:
    every row (:func:`read_datasplit`'s checks), the split (:func:`split_problems`, and a row
    for each of train, validate and test), each crop's data (:func:`data_problems`), and crops
    in different splits that share data (:func:`cellseg.data.split_units.leakage_problems`:
    boxes of one EM, copies included, that overlap, touch or lie within ``margin_nm``; with
    ``split_by="dataset"`` also a dataset spread over several splits).

    Raises:
        CellsegError: every problem found, one ``file:row`` line each.
    """
    path = Path(path)
    rows, problems, marked = _read_rows(path)
    problems += split_problems(rows)
    crops = [crop for _, crop in rows]
    problems += [
        f"{path}: no {split} rows; the workflow needs train, validate and test crops: mark some "
        f'rows "{split}"'
        for split in missing_splits(crops)
        if split not in marked  # its rows are refused above
    ]
    problems += data_problems(rows, resolution_nm, log, em_range)
    # a crop that cannot be placed is already a problem above (its row or its data)
    boxes, _ = place_crops(crops, [where for where, _ in rows])
    problems += leakage_problems(rows, boxes, margin_nm, split_by)
    if problems:
        raise CellsegError(problem_lines(path, problems))
    return crops


def _run(args: argparse.Namespace) -> int:
    if args.from_csv:
        crops = check_datasplit(
            args.from_csv, args.resolution_nm, margin_nm=args.split_margin_nm,
            split_by=args.split_by, em_range=args.em_range,
        )  # fmt: skip
        check_outside_stores(args.out, crops)
    else:
        crops = make_datasplit(
            args.root, args.validate_fraction, args.test_fraction, args.seed, args.resolution_nm,
            margin_nm=args.split_margin_nm, split_by=args.split_by,
        )  # fmt: skip
        check_outside_stores(args.out, crops)
        rows = [(crop.name, crop) for crop in crops]
        problems = split_problems(rows) + data_problems(
            rows, args.resolution_nm, em_range=args.em_range
        )
        problems += [
            f"no {split} crops among the {len(crops)} found: raise --{split}-fraction "
            f"(data.{split}_fraction), or add crops"
            for split in missing_splits(crops)
            if split != "train"
        ]
        if problems:
            raise CellsegError(problem_lines(", ".join(map(str, args.root)), problems))
    write_datasplit(crops, args.out)
    counts = Counter(crop.split for crop in crops)
    print(f"{args.out}: " + ", ".join(f"{counts[s]} {s}" for s in SPLITS))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "datasplit", help="split the crops of CellMap data roots into train/validate/test"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--root", type=Path, action="append", help="CellMap data root (repeatable)")
    source.add_argument("--from-csv", type=Path, help="validate a user datasplit CSV instead")
    parser.add_argument("--out", type=Path, required=True, help="output CSV")
    parser.add_argument("--validate-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--split-margin-nm",
        type=float,
        default=0.0,
        help="crops of one EM whose boxes lie within this many nm (0: overlap or touch) share "
        "a split (data.split_margin_nm)",
    )
    parser.add_argument(
        "--split-by",
        choices=SPLIT_BY,
        default="crop",
        help="hold out crops (units of overlapping crops) or whole datasets (data.split_by)",
    )
    parser.add_argument(
        "--em-range",
        type=float,
        nargs=2,
        default=EM_RANGE,
        metavar=("LOW", "HIGH"),
        help="raw EM values the models clip to (data.em_range): float EM mostly outside it is "
        "refused",
    )
    parser.add_argument(
        "--resolution-nm",
        type=resolution_argument,
        help="leave out crops whose labels have no level within 2x of this voxel size (nm): "
        "8, or z,y,x such as 50,8,8",
    )
    parser.set_defaults(func=_run)
