"""The model comparison on synthetic metric tables: ranking, CIs, tests, baseline, missing models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellseg.challenge import ORTOOLS_VERSION
from cellseg.classes import CLASSES
from cellseg.errors import CellsegError
from cellseg.figure_slices import sample_slices
from cellseg.reporting import (
    BASELINE,
    Summary,
    SummarySettings,
    make_study,
    make_summary,
    metric_counts,
    prior_baseline_counts,
    summarize,
    summarize_study,
    summary_markdown,
)
from cellseg.reporting.figures import STUDY_FIGURES, SUMMARY_FIGURES
from cellseg.statistics import (
    compare_runs_with_best,
    mean_dice_interval,
    paired_comparison,
    replicate_mean_interval,
)
from cellseg.visualization import crop_panels_figure, training_curves_figure
from test_statistics import naive_sign_flip

CLASSES3 = ("ecs", "mito_lum", "nuc")


def metrics_table(
    model: str, quality: np.ndarray, positives: int = 100, datasets: int = 1
) -> pd.DataFrame:
    """Rows of a metrics CSV whose per-crop Dice is exactly ``quality[crop, class]``.

    With ``FP = FN = P - TP``, Dice = ``TP / P``; ``quality`` is (crops, len(CLASSES3)). Crops
    are ``d/cropNNN`` (one dataset), or with ``datasets`` > 1 ``dG/cropNNN``, crop ``i`` in
    dataset ``i mod datasets``.
    """
    rows = []
    for i, per_class in enumerate(quality):
        crop = f"d{i % datasets if datasets > 1 else ''}/crop{i:03d}"
        for name, q in zip(CLASSES3, per_class, strict=True):
            tp = int(q * positives + 0.5)
            rows.append(
                {"model": model, "dim": "2d", "adjustment": "train", "crop": crop,
                 "class": name, "tp": tp, "fp": positives - tp, "fn": positives - tp,
                 "tn": 1000, "inference_seconds": 0.5}
            )  # fmt: skip
    return pd.DataFrame(rows)


def write_model(tmp: Path, key: str, table: pd.DataFrame, **train) -> tuple[Path, Path]:
    metrics = tmp / f"{key}.csv"
    table.to_csv(metrics, index=False)
    summary = tmp / f"{key}_train_summary.json"
    summary.write_text(
        json.dumps(
            {"model": key.split("_")[0], "dim": key.split("_")[1], "preset": "demo",
             "parameters": 1000, "epochs_run": 10, "best_epoch": 4, "best_val_mean_dice": 0.5,
             "stop_reason": "early_stop", "train_seconds": 3600.0, "gpus": 1, "gpu_hours": 1.0,
             "cpu_hours": 0.0} | train
        )
    )  # fmt: skip
    return metrics, summary


@pytest.fixture
def frequencies(tmp_path: Path) -> Path:
    path = tmp_path / "class_frequencies.json"
    per_class = {name: {"annotated_voxels": 1000, "positive_voxels": 100, "crops": 3, "prior": 0.1}
                 for name in CLASSES}  # fmt: skip
    path.write_text(json.dumps({"classes": list(CLASSES), "per_class": per_class}))
    return path


def three_models(tmp_path: Path, n: int = 30) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.9, size=(n, 3))
    levels = {"unet_3d": 0.0, "unet_2d": -0.05, "vit_2d": -0.3}
    metrics, train = {}, {}
    for key, shift in levels.items():
        quality = np.clip(base + shift + rng.normal(0, 0.01, size=base.shape), 0, 1)
        metrics[key], train[key] = write_model(tmp_path, key, metrics_table(key, quality))
    return metrics, train


def test_ranking_best_model_and_significance(tmp_path, frequencies):
    metrics, train = three_models(tmp_path)
    summary = summarize(metrics, train, frequencies, expected=list(metrics))
    table = summary.table.set_index("model")
    assert table.loc["unet_3d", "rank"] == 1
    assert table.loc["unet_2d", "rank"] == 2
    assert table.loc["vit_2d", "rank"] == 3
    assert (table["best_model"] == "unet_3d").all()
    assert table.loc["unet_3d", "diff_to_best"] == 0
    assert table.loc["vit_2d", "diff_to_best"] == pytest.approx(-0.3, abs=0.02)
    assert table.loc["vit_2d", "significant"]
    low, high = table.loc["unet_3d", ["mean_dice_ci_low", "mean_dice_ci_high"]]
    assert low < table.loc["unet_3d", "mean_dice"] < high
    assert table.loc["unet_3d", "compute_hours"] == 1.0
    assert table.loc["unet_3d", "status"] == "ok"
    # the per-class columns are pooled Dice; ecs of the best model is its pooled TP / P
    counts = metric_counts(pd.read_csv(metrics["unet_3d"]))[1]
    pooled = counts[:, 0, 0].sum() / (counts[:, 0, 0] + counts[:, 0, 2]).sum()
    assert table.loc["unet_3d", "dice_ecs"] == pytest.approx(pooled)
    assert summary.winners.set_index("class").loc["ecs", "winner"] == "unet_3d"
    # three clearly separated models: each rank set is its rank, the best is best every time
    for model, rank in (("unet_3d", 1), ("unet_2d", 2), ("vit_2d", 3)):
        assert table.loc[model, "rank_low"] == table.loc[model, "rank_high"] == rank
    assert table.loc["unet_3d", "p_best"] == 1.0 and pd.isna(table.loc[BASELINE, "rank_low"])
    text = summary_markdown(summary)
    assert "## How sure is the ranking?" in text and "| unet_2d | 2 | 2 | 0% |" in text


def test_the_units_of_inference_follow_the_datasets(tmp_path, frequencies):
    """Crops from 8 datasets (at least evaluation.min_datasets_for_clusters): the datasets are
    the units, the CI is the one-sample t-interval of the 8 dataset means (every crop
    annotating every class, 3 crops a dataset), and summary.md says the claims are about new
    datasets; from 3 datasets the crops are the units and the claims are about these 3."""
    from scipy import stats

    rng = np.random.default_rng(5)
    for datasets, unit in ((8, "dataset"), (3, "crop")):
        n = 24
        dataset_effect = rng.normal(0, 0.08, datasets)[np.arange(n) % datasets]
        base = 0.6 + dataset_effect[:, None] + rng.normal(0, 0.03, (n, 3))
        metrics, train = {}, {}
        folder = tmp_path / unit
        folder.mkdir()
        for key, shift in (("unet_3d", 0.0), ("unet_2d", -0.02), ("vit_2d", -0.2)):
            quality = np.round(np.clip(base + shift + rng.normal(0, 0.02, base.shape), 0, 1), 2)
            table = metrics_table(key, quality, datasets=datasets)
            metrics[key], train[key] = write_model(folder, key, table)
            if key == "unet_3d":
                reference = quality
        summary = summarize(metrics, train, frequencies, expected=list(metrics))
        table = summary.table.set_index("model")
        assert (table["inference_unit"] == unit).all(), table["inference_unit"]
        assert (table["n_datasets"] == datasets).all()
        assert summary.n_datasets == datasets and summary.inference_unit == unit
        text = summary_markdown(summary)
        assert "one trained instance" in text
        low, high = table.loc["unet_3d", ["mean_dice_ci_low", "mean_dice_ci_high"]]
        if unit == "dataset":
            assert "**new datasets like these**" in text
            means = [reference[np.arange(n) % datasets == g].mean() for g in range(datasets)]
            ci = stats.ttest_1samp(means, 0.0).confidence_interval(0.95)
            assert (low, high) == pytest.approx((ci.low, ci.high), rel=1e-9)
            assert table.loc["vit_2d", "significant"]
        else:
            assert f"**these {datasets} datasets**" in text
            assert low < table.loc["unet_3d", "mean_dice"] < high


def test_paired_ci_contains_the_true_difference_in_simulation():
    """The true difference of mean Dice is 0.1; the 95 % CI should cover it ~95 % of the time."""
    covered = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        a = rng.uniform(0.5, 0.9, size=(40, 3))
        b = a - 0.1 + rng.normal(0, 0.03, size=a.shape)
        counts = [
            metric_counts(metrics_table(k, q))[1] for k, q in (("a", a), ("b", np.clip(b, 0, 1)))
        ]
        result = paired_comparison(counts[0], counts[1], "mean", n_resamples=500, seed=seed)
        covered += result.low <= 0.1 <= result.high
    assert covered >= 16


def test_baseline_row_is_the_expected_score_of_the_prior(tmp_path, frequencies):
    metrics, train = three_models(tmp_path, n=8)
    summary = summarize(metrics, train, frequencies, expected=list(metrics))
    baseline = summary.table.set_index("model").loc[BASELINE]
    # every crop: P = 100 positives of N = 1200 - TP... computed from the ground truth only
    counts = metric_counts(pd.read_csv(metrics["unet_3d"]))[1]
    expected = prior_baseline_counts(counts, [0.1] * len(CLASSES))
    positives = counts[..., 0] + counts[..., 2]
    np.testing.assert_allclose(expected[..., 0], 0.1 * positives)
    np.testing.assert_allclose(expected.sum(-1), counts.sum(-1))
    tp, fp, fn = (expected[:, 0, k].sum() for k in range(3))
    assert baseline["dice_ecs"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert baseline["status"] == "baseline" and pd.isna(baseline["rank"])
    assert baseline["mean_dice"] < summary.table.set_index("model").loc["vit_2d", "mean_dice"]
    assert summary.table.set_index("model").loc["vit_2d", "above_baseline"]


def test_too_few_crops_give_no_interval_and_no_p_value(tmp_path, frequencies):
    """Two crops, a large difference: the old paired bootstrap called it "significantly worse,
    p = 0.004"; an exact test over 2 crops cannot go below p = 0.5, so nothing is reported."""
    metrics, train = three_models(tmp_path, n=2)
    summary = summarize(metrics, train, frequencies, expected=list(metrics))
    table = summary.table.set_index("model")
    assert table.loc["vit_2d", "diff_to_best"] == pytest.approx(-0.3, abs=0.02)
    for column in ("mean_dice_ci_low", "mean_dice_ci_high", "diff_ci_low", "p_value", "p_adjusted"):
        assert table[column].isna().all(), column
    assert table["significant"].isna().all() and table["above_baseline"].isna().all()
    assert table.loc["vit_2d", "compared_crops"] == 2
    assert set(summary.winners["winner"]) == {"tie", ""}  # "": no crop annotates the class
    text = summary_markdown(summary)
    assert "**No confidence intervals and no p-values**: 2 test crop(s)" in text
    assert "2/2^2 = 0.5" in text and "significantly" not in text
    assert "vit_2d: Δ -0.29" in text and "not tested (fewer than 6" in text


def test_comparison_p_value_is_the_exact_sign_flip_test(tmp_path, frequencies):
    metrics, train = three_models(tmp_path, n=8)
    summary = summarize(metrics, train, frequencies, expected=list(metrics))
    table = summary.table.set_index("model")
    counts = {k: metric_counts(pd.read_csv(path))[1] for k, path in metrics.items()}
    # an independent reference: every one of the 2^8 swaps, statistic from aggregate_crops
    p = naive_sign_flip(counts["unet_2d"], counts["unet_3d"], "mean")
    assert table.loc["unet_2d", "p_value"] == pytest.approx(p, abs=1e-12)
    assert p == pytest.approx(2 / 2**8)  # every crop worse: only the 2 extreme flips
    # "worse than the best" accounts for choosing the best: step-down max-T over the 3 models;
    # its last step (unet_2d against unet_3d alone) is the sign-flip test, here by Monte Carlo
    # with best_permutations = 9999 (standard error 0.0009)
    assert table.loc["unet_2d", "p_adjusted"] == pytest.approx(2 / 2**8, abs=0.003)
    assert table.loc["vit_2d", "p_adjusted"] <= table.loc["unet_2d", "p_adjusted"]
    assert table["significant"].loc[["unet_2d", "vit_2d"]].all()
    assert pd.isna(table.loc[BASELINE, "p_adjusted"]) and table.loc[BASELINE, "p_value"] < 0.05
    interval = mean_dice_interval(counts["unet_3d"])
    low, high = table.loc["unet_3d", ["mean_dice_ci_low", "mean_dice_ci_high"]]
    assert (low, high) == pytest.approx((interval.low, interval.high))


def test_class_winner_is_only_named_beyond_noise(tmp_path):
    """ecs: unet_3d better on every crop (a winner); mito_lum: the two models differ by noise
    only (a tie, whichever leads); nuc: annotated by 4 crops only (too few to test: a tie)."""
    rng = np.random.default_rng(3)
    n = 12
    base = rng.uniform(0.4, 0.8, size=(n, 3))
    better = base.copy()
    better[:, 0] += 0.1
    better[:, 1] += rng.normal(0, 0.03, size=n)
    better[:, 2] += 0.1
    metrics = {}
    for key, quality in (("unet_3d", better), ("unet_2d", base)):
        table = metrics_table(key, np.clip(quality, 0, 1))
        table = table[~((table["class"] == "nuc") & (table["crop"] >= "d/crop004"))]
        metrics[key] = tmp_path / f"{key}.csv"
        table.to_csv(metrics[key], index=False)
    winners = summarize(metrics, None, None, expected=[]).winners.set_index("class")
    assert winners.loc["ecs", "winner"] == "unet_3d" and winners.loc["ecs", "crops"] == n
    assert winners.loc["ecs", "p_holm"] < 0.05
    assert winners.loc["mito_lum", "winner"] == "tie" and winners.loc["mito_lum", "p_holm"] > 0.05
    assert winners.loc["mito_lum", "leader"] in ("unet_3d", "unet_2d")
    assert winners.loc["nuc", "winner"] == "tie" and winners.loc["nuc", "crops"] == 4
    assert winners.loc["nuc", "leader"] == "unet_3d" and pd.isna(winners.loc["nuc", "p_value"])
    assert winners.loc["er_mem", "winner"] == ""  # no crop annotates it


def test_hand_computed_baseline_dice():
    # P = 10 of N = 100, prior 0.1: TP 1, FP 9, FN 9 -> Dice 2 / 20
    counts = np.zeros((1, len(CLASSES), 4))
    counts[0, 0] = (4, 3, 6, 87)
    expected = prior_baseline_counts(counts, [0.1] * len(CLASSES))
    np.testing.assert_allclose(expected[0, 0], (1, 9, 9, 81))


def test_missing_failed_and_not_converged_models_are_reported(tmp_path, frequencies):
    metrics, train = three_models(tmp_path, n=4)
    _, train["unet_2d"] = write_model(
        tmp_path, "unet_2d", pd.read_csv(metrics["unet_2d"]), stop_reason="max_epochs",
        best_epoch=9, epochs_run=10,
    )  # fmt: skip
    _, train["vit_2d"] = write_model(
        tmp_path, "vit_2d", pd.read_csv(metrics["vit_2d"]), stop_reason="",
        best_val_mean_dice=None,
    )  # fmt: skip
    metrics["swin_3d"] = tmp_path / "nothing.csv"
    expected = ["unet_2d", "unet_3d", "vit_2d", "swin_3d", "resnet_3d"]
    summary = summarize(metrics, train, frequencies, expected=expected)
    status = summary.table.set_index("model")["status"]
    assert status["unet_2d"] == "not converged"
    assert status["vit_2d"] == "failed" and status["swin_3d"] == "missing"
    assert pd.isna(summary.table.set_index("model").loc["vit_2d", "rank"])
    assert summary.missing == ["swin_3d", "resnet_3d"]
    text = summary_markdown(summary)
    for needle in ("unet_2d: not converged", "vit_2d: failed", "swin_3d: missing",
                   "resnet_3d: missing: expected but not in the config",
                   "Missing from this comparison: swin_3d, resnet_3d", "scores 1"):  # fmt: skip
        assert needle in text


def test_any_subset_of_models_and_written_outputs(tmp_path, frequencies):
    metrics, train = three_models(tmp_path, n=3)
    one = {"vit_2d": metrics["vit_2d"]}
    out = tmp_path / "out"
    summary = make_summary(
        one, {"vit_2d": train["vit_2d"]}, frequencies, out / "summary.csv", out / "summary.md",
        out / "figures", expected=["vit_2d", "unet_3d"], settings=SummarySettings(rank_by="pooled"),
    )  # fmt: skip
    table = pd.read_csv(out / "summary.csv")
    assert table["model"].tolist() == ["vit_2d", BASELINE]
    assert [f"dice_{c}" for c in CLASSES] == [c for c in table if c.startswith("dice_")]
    assert summary.missing == ["unet_3d"]
    for name in SUMMARY_FIGURES:
        assert (out / "figures" / name).read_bytes()[:4] == b"\x89PNG"
    assert "ranked by pooled Dice" in (out / "summary.md").read_text()


def test_no_metrics_at_all_is_an_error(tmp_path):
    with pytest.raises(CellsegError, match="no model has a metrics CSV"):
        summarize({"unet_2d": None}, None, None, expected=["unet_2d"])


def test_mixed_primary_adjustments_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    a = metrics_table("a", rng.uniform(size=(3, 3)))
    b = metrics_table("b", rng.uniform(size=(3, 3))).assign(adjustment="none")
    a.to_csv(tmp_path / "a_2d.csv", index=False)
    b.to_csv(tmp_path / "b_2d.csv", index=False)
    paths = {"a_2d": tmp_path / "a_2d.csv", "b_2d": tmp_path / "b_2d.csv"}
    with pytest.raises(CellsegError, match="adjustment"):
        summarize(paths, None, None, expected=[])
    # choosing the mode explicitly: b has no train rows
    with pytest.raises(CellsegError, match="no rows for adjustment 'train'"):
        summarize(paths, None, None, expected=[], settings=SummarySettings(adjustment="train"))


def test_sample_slices_are_seeded_and_distinct():
    picks = sample_slices(5, [10, 12, 14, 16, 18], 3, seed=42)
    assert picks == sample_slices(5, [10, 12, 14, 16, 18], 3, seed=42)
    assert len({crop for crop, _ in picks}) == 3
    assert all(z == [10, 12, 14, 16, 18][crop] // 2 for crop, z in picks)
    assert len(sample_slices(1, [8], 3, seed=42)) == 3


def test_model_figures_draw(tmp_path):
    target = np.full((len(CLASSES), 6, 8), np.nan, dtype=np.float32)
    target[0, :3] = 1.0
    target[0, 3:] = 0.0
    target[:, :, 6:] = np.nan  # a strip no class annotates
    figure = crop_panels_figure(
        [(np.zeros((6, 8)), target, np.zeros_like(target), "crop z=0")] * 2, "title"
    )
    assert len(figure.axes) == 6
    history = pd.DataFrame(
        {"epoch": [0, 1], "train_loss": [0.9, 0.8], "val_loss": [0.95, 0.85], "lr": [1e-3, 5e-4],
         "val_mean_dice": [0.1, 0.2], "val_dice_ecs": [0.1, 0.3], "val_dice_nuc": [np.nan, np.nan]}
    )  # fmt: skip
    curves = training_curves_figure(history, "unet_2d")
    labels = [line.get_label() for line in curves.axes[3].get_lines()]
    assert labels == ["ecs"]


def challenge_metrics(with_instances: bool = True) -> pd.DataFrame:
    """Two crops of hand-picked counts; nuc with challenge-style instance columns."""
    rows = [  # crop, class, tp, fp, fn, instance tp, fp, fn, Σ normalised Hausdorff, count
        ("d/crop0", "ecs", 30, 10, 10, None),
        ("d/crop0", "mito_lum", 0, 0, 0, None),
        ("d/crop0", "nuc", 50, 5, 5, (1, 1, 0, 1.5, 2)),
        ("d/crop1", "ecs", 20, 0, 20, None),
        ("d/crop1", "mito_lum", 5, 5, 0, None),
        ("d/crop1", "nuc", 40, 0, 9, (2, 0, 1, 2.0, 3)),
    ]
    table = []
    for crop, name, tp, fp, fn, instance in rows:
        row = {"model": "unet", "dim": "3d", "adjustment": "train", "crop": crop,
               "class": name, "tp": tp, "fp": fp, "fn": fn, "tn": 100, "inference_seconds": 1.0}  # fmt: skip
        if with_instances:
            keys = ("instance_tp", "instance_fp", "instance_fn", "hausdorff_norm_sum",
                    "hausdorff_count")  # fmt: skip
            row |= dict(zip(keys, instance or (None,) * 5, strict=True))
            row["instance_status"] = "scored" if instance else None
            # the corrected scorer: the same counts, crop0's Hausdorff sum 1.2 (not 1.5)
            corrected = instance and (*instance[:3], 1.2 if crop == "d/crop0" else 2.0, instance[4])
            row |= {f"corrected_{k}": v
                    for k, v in zip(keys, corrected or (None,) * 5, strict=True)}  # fmt: skip
            row["corrected_instance_status"] = "scored" if instance else None
        table.append(row)
    return pd.DataFrame(table)


def summarize_one(tmp_path: Path, table: pd.DataFrame, frequencies: Path) -> tuple[Summary, Path]:
    """``make_summary`` of one model, ``unet_3d``, with metrics ``table``; its files in
    ``tmp_path/out``. Returns the summary and that folder."""
    metrics, train = write_model(tmp_path, "unet_3d", table)
    out = tmp_path / "out"
    summary = make_summary(
        {"unet_3d": metrics}, {"unet_3d": train}, frequencies, out / "summary.csv",
        out / "summary.md", out / "figures", expected=["unet_3d"],
    )  # fmt: skip
    return summary, out


def test_pooled_iou_and_challenge_score_by_hand(tmp_path, frequencies):
    summary, out = summarize_one(tmp_path, challenge_metrics(), frequencies)
    row = summary.table.set_index("model").loc["unet_3d"]
    iou_ecs, iou_mito = 50 / (50 + 10 + 30), 5 / 10  # crop0 has no mito_lum at all
    assert row["iou_ecs"] == pytest.approx(iou_ecs)
    assert row["iou_mito_lum"] == pytest.approx(iou_mito)
    assert row["iou_nuc"] == pytest.approx(90 / (90 + 5 + 14))
    assert np.isnan(row["iou_er_lum"])  # no crop annotates it
    assert row["pooled_iou"] == pytest.approx(np.mean([iou_ecs, iou_mito, 90 / 109]))
    # nuc: F1 = 2 * 3 / (2 * 3 + 1 + 1), mean normalised Hausdorff 3.5 / 5
    assert row["challenge_f1_nuc"] == pytest.approx(0.75)
    assert row["challenge_hausdorff_nuc"] == pytest.approx(0.7)
    assert row["challenge_combined_nuc"] == pytest.approx(np.sqrt(0.75 * 0.7))
    semantic = (iou_ecs + iou_mito) / 2  # nuc is scored as an instance class only
    assert row["challenge_semantic"] == pytest.approx(semantic)
    assert row["challenge_score"] == pytest.approx(np.sqrt(np.sqrt(0.75 * 0.7) * semantic))
    # the corrected scorer's columns: mean normalised Hausdorff 3.2 / 5
    assert row["challenge_corrected_f1_nuc"] == pytest.approx(0.75)
    assert row["challenge_corrected_hausdorff_nuc"] == pytest.approx(0.64)
    corrected = np.sqrt(np.sqrt(0.75 * 0.64) * semantic)
    assert row["challenge_corrected_score"] == pytest.approx(corrected)
    baseline = summary.table.set_index("model").loc[BASELINE]
    assert np.isnan(baseline["challenge_score"]) and np.isnan(baseline["challenge_corrected_score"])
    written = pd.read_csv(out / "summary.csv")
    per_class = [c for c in written if c.startswith(("dice_", "iou_"))]
    assert per_class == [f"dice_{c}" for c in CLASSES] + [f"iou_{c}" for c in CLASSES]
    markdown = (out / "summary.md").read_text()
    assert "## Challenge scores on our test crops (not a leaderboard number)" in markdown
    assert "6b9ad6893ef1059227917af2a59cc2e61d84fa7e" in markdown  # the scorer's commit
    assert f"OR-Tools {ORTOOLS_VERSION}'s min-cost flow" in markdown  # and its solver
    assert (f"| unet_3d | {row['challenge_score']:.3f} | {corrected:.3f} | {semantic:.3f} | 0.750 "
            f"| 0.700 | {np.sqrt(0.75 * 0.7):.3f} | 0.640 |") in markdown  # fmt: skip
    assert f"| ecs | {iou_ecs:.3f} |" in markdown


def test_metrics_without_instance_columns_leave_the_challenge_score_undefined(tmp_path):
    metrics, _ = write_model(tmp_path, "unet_3d", challenge_metrics(with_instances=False))
    row = summarize({"unet_3d": metrics}, expected=["unet_3d"]).table.iloc[0]
    assert np.isnan(row["challenge_score"]) and np.isnan(row["challenge_f1_nuc"])
    assert np.isnan(row["challenge_corrected_score"])
    assert row["challenge_semantic"] == pytest.approx((50 / 90 + 0.5) / 2)


def test_no_annotated_instance_class_makes_the_challenge_score_undefined_not_zero(
    tmp_path, frequencies
):
    """Crops annotating no instance class: the official scorer's 0 for the missing instance part
    would make every model (and chance) score 0; the summary says the score cannot be computed
    and keeps the semantic part."""
    table = challenge_metrics()
    table = table[table["class"] != "nuc"]
    summary, out = summarize_one(tmp_path, table, frequencies)
    row = summary.table.set_index("model").loc["unet_3d"]
    assert np.isnan(row["challenge_score"]) and np.isnan(row["challenge_corrected_score"])
    assert row["challenge_semantic"] == pytest.approx((50 / 90 + 0.5) / 2)
    markdown = (out / "summary.md").read_text()
    assert "**The challenge score cannot be computed on these crops**" in markdown
    assert "| unet_3d | – | – | 0.528 |" in markdown
    # with nuc annotated (the hand-computed test above) the sentence is absent
    (tmp_path / "b").mkdir()
    with_nuc, _ = write_model(tmp_path / "b", "unet_3d", challenge_metrics())
    assert summarize({"unet_3d": with_nuc}, expected=["unet_3d"]).table.iloc[0][
        "challenge_score"
    ] == pytest.approx(np.sqrt(np.sqrt(0.75 * 0.7) * (50 / 90 + 0.5) / 2))


def test_metrics_from_before_the_official_scorer_give_no_official_score(tmp_path):
    """A metrics CSV without the corrected_* columns predates the official mode: its unprefixed
    instance columns hold the corrected scorer's numbers, so no challenge_* number is made."""
    old = challenge_metrics()
    old = old.drop(columns=[c for c in old if c.startswith("corrected_")])
    metrics, _ = write_model(tmp_path, "unet_3d", old)
    row = summarize({"unet_3d": metrics}, expected=["unet_3d"]).table.iloc[0]
    assert np.isnan(row["challenge_score"]) and np.isnan(row["challenge_f1_nuc"])


# ------------------------------------------------------------------------------ studies


def study_runs(tmp_path: Path, n: int = 12, seeds: int = 3) -> tuple[dict, dict]:
    """Metrics of 2 models x 2 variants x ``seeds`` seeds on the same ``n`` crops, each run's
    per-crop Dice exact (``metrics_table``); returns (run -> CSV, run -> (n, 3) Dice)."""
    rng = np.random.default_rng(1)
    crops = rng.uniform(0.4, 0.8, size=(n, 3))
    shifts = {"unet_2d~a": 0.0, "unet_2d~b": -0.1, "resnet_2d~a": 0.1, "resnet_2d~b": 0.05}
    metrics, quality = {}, {}
    for group, shift in shifts.items():
        for k in range(seeds):
            name = group + (f"~r{k}" if k else "")
            q = np.clip(
                crops + shift + rng.normal(0, 0.03) + rng.normal(0, 0.02, crops.shape), 0, 1
            )
            quality[name] = np.round(q * 100) / 100  # what the integer counts hold
            metrics[name], _ = write_model(tmp_path, name, metrics_table(name, q))
    return metrics, quality


def test_study_aggregates_seeds_and_ranks_variants(tmp_path):
    metrics, quality = study_runs(tmp_path)
    variants = {"a": {"loss": {"tau": 0.5}}, "b": {"loss": {"alpha": 0.7, "beta": 0.3}}}
    loss = {"tau": 1.0, "alpha": 0.6, "beta": 0.4, "sign": "seed"}
    study = summarize_study(metrics, variants, loss)
    table = study.table.set_index("group")
    assert list(study.table["group"]) == ["resnet_2d~a", "resnet_2d~b", "unet_2d~a", "unet_2d~b"]
    assert list(study.table["rank"]) == [1, 2, 3, 4]
    assert (
        table.loc["unet_2d~a", "rank_in_model"] == 1
        and table.loc["resnet_2d~b", "rank_in_model"] == 2
    )
    # independent reference: per-seed score = mean over the 3 classes of the mean over crops
    for group in table.index:
        names = [group] + [f"{group}~r{k}" for k in (1, 2)]
        per_seed = [quality[name].mean(axis=0).mean() for name in names]
        assert table.loc[group, "n_seeds"] == 3 and table.loc[group, "n_crops"] == 12
        assert table.loc[group, "score"] == pytest.approx(np.mean(per_seed), abs=1e-9)
        assert table.loc[group, "sd_seeds"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-9)
        values = np.full((3, 12, len(CLASSES)), np.nan)
        for s, name in enumerate(names):
            values[s][:, [CLASSES.index(c) for c in CLASSES3]] = quality[name]
        interval = replicate_mean_interval(values)
        assert table.loc[group, "ci_low"] == pytest.approx(interval.low, abs=1e-9)
        assert table.loc[group, "ci_high"] == pytest.approx(interval.high, abs=1e-9)
    # the variant's resolved loss: its overrides over the config's loss
    assert table.loc["unet_2d~a", "tau"] == 0.5 and table.loc["unet_2d~a", "alpha"] == 0.6
    assert table.loc["unet_2d~b", "tau"] == 1.0 and table.loc["unet_2d~b", "alpha"] == 0.7
    assert table.loc["resnet_2d~a", "p_vs_best"] != table.loc["resnet_2d~a", "p_vs_best"]  # NaN
    assert table.loc["unet_2d~b", "diff_vs_best"] < table.loc["unet_2d~a", "diff_vs_best"] < 0
    assert table.loc["unet_2d~b", "diff_vs_model_best"] == pytest.approx(
        table.loc["unet_2d~b", "score"] - table.loc["unet_2d~a", "score"], abs=1e-9
    )
    assert set(study.seeds["group"]) == set(table.index) and len(study.seeds) == 12


def test_study_comparison_is_the_replicate_interval_of_paired_differences(tmp_path):
    from scipy import stats

    metrics, quality = study_runs(tmp_path)
    study = summarize_study(metrics)
    row = study.table.set_index("group").loc["unet_2d~b"]
    columns = [CLASSES.index(c) for c in CLASSES3]
    diffs = np.full((3, 12, len(CLASSES)), np.nan)
    for s, suffix in enumerate(["", "~r1", "~r2"]):
        diffs[s][:, columns] = quality[f"unet_2d~b{suffix}"] - quality[f"unet_2d~a{suffix}"]
    interval = replicate_mean_interval(diffs, bound=1.0)
    assert row["diff_vs_model_best"] == pytest.approx(interval.estimate, abs=1e-9)
    p = 2 * stats.t.sf(abs(interval.estimate / interval.se), interval.df)
    # one comparison (Holm = raw) within the model: the better of two needs no selection step
    assert row["p_vs_model_best"] == pytest.approx(p, rel=1e-9)
    # overall the best is chosen among 4 groups: the permutation of the 4 x 3 runs within
    # each seed index must call unet_2d~b worse too
    groups = ["resnet_2d~a", "resnet_2d~b", "unet_2d~a", "unet_2d~b"]
    scores = np.array(
        [
            [quality[f"{g}{suffix}"].mean(axis=0).mean() for suffix in ["", "~r1", "~r2"]]
            for g in groups
        ]
    )
    selection = compare_runs_with_best(scores, 9999, 0).p_adjusted[3]
    assert row["p_vs_best"] >= selection and 0 <= row["p_vs_best"] <= 1


def test_study_without_enough_crops_has_no_ci_and_writes_its_outputs(tmp_path):
    metrics, _ = study_runs(tmp_path, n=4, seeds=2)
    out = tmp_path / "out"
    study = make_study(
        metrics, {"a": {"loss": {"tau": 0.5}}, "b": {"loss": {"tau": 2.0}}}, {"tau": 1.0},
        out / "study.csv", out / "study.md", out / "figures",
    )  # fmt: skip
    assert study.table["ci_low"].isna().all() and study.table["p_vs_best"].isna().all()
    assert pd.read_csv(out / "study.csv")["group"].tolist() == study.table["group"].tolist()
    text = (out / "study.md").read_text()
    assert "## Ranking within each model" in text and "### unet_2d" in text
    for name in STUDY_FIGURES:
        assert (out / "figures" / name).stat().st_size > 0


def test_study_left_out_run_is_noted(tmp_path):
    metrics, _ = study_runs(tmp_path, seeds=1)
    metrics["unet_2d~c"] = tmp_path / "nothing.csv"
    study = summarize_study(metrics)
    assert study.notes == [f"unet_2d~c: missing: no metrics ({tmp_path / 'nothing.csv'})"]
    assert study.table["sd_seeds"].isna().all()  # one seed: no SD


def test_one_factor_rows_keep_variants_moving_only_that_key():
    from cellseg.reporting.figures import one_factor_rows

    table = pd.DataFrame(
        {"tau": [0.0, 1.0, 1.0, 2.0], "sign": ["seed", "seed", "additive", "seed"],
         "alpha": [0.6] * 4, "beta": [0.4] * 4, "inference_logit_adjustment": ["train"] * 4}
    )  # fmt: skip
    loss = {"tau": 1.0, "sign": "seed", "alpha": 0.6, "beta": 0.4}
    assert list(one_factor_rows(table, loss, ["tau"]).index) == [0, 1, 3]
    assert list(one_factor_rows(table, loss, ["alpha", "beta"]).index) == [1]


def test_summary_names_the_intervals_on_the_conservative_variance(tmp_path, frequencies):
    from cellseg.statistics import class_mean_interval

    # a seeded search for 6 crops whose classes' scores move against each other so strongly
    # that the unbiased variance is not positive (as the integer counts hold them)
    rng = np.random.default_rng(3)
    while True:
        annotated = rng.random((6, 3)) < 0.6
        quality = np.round(rng.uniform(0.2, 0.9, size=(6, 3)) * 100) / 100
        values = np.where(annotated, quality, np.nan)
        designed = (annotated.sum(axis=0) >= 2).all() and annotated.any(axis=1).all()
        if designed and class_mean_interval(values).conservative:
            break
    table = metrics_table("unet_2d", quality)
    keep = annotated.reshape(-1)  # rows are crop-major, class-minor, as in `annotated`
    metrics, train = write_model(tmp_path, "unet_2d", table[keep].reset_index(drop=True))
    summary = summarize({"unet_2d": metrics}, {"unet_2d": train}, frequencies, ["unet_2d"])
    assert "unet_2d mean Dice" in summary.conservative
    row = summary.table.set_index("model").loc["unet_2d"]
    assert row["mean_dice_ci_high"] - row["mean_dice_ci_low"] > 0
    text = summary_markdown(summary)
    assert "The unbiased variance came out not positive for unet_2d mean Dice" in text
    # the usual case says nothing about it
    (tmp_path / "usual").mkdir()
    metrics, train = three_models(tmp_path / "usual")
    usual = summarize(metrics, train, frequencies, expected=list(metrics))
    assert usual.conservative == [] and "not positive" not in summary_markdown(usual)


def test_no_study_comparison_leaves_its_holm_family_silently(tmp_path):
    rng = np.random.default_rng(2)
    # scores in 64ths (64 positive voxels): sums and differences are exact in binary
    crops = rng.integers(26, 52, size=(8, 3)) / 64
    metrics = {}
    # unet_2d~b is unet_2d~a minus exactly 0.25 on every crop, class and seed: no spread, which
    # used to give a NaN p-value and drop the comparison from the Holm family
    for group, shift, seeds in (
        ("unet_2d~a", 0.0, 2),
        ("unet_2d~b", -0.25, 2),
        ("unet_2d~c", -0.375, 3),
    ):
        for k in range(seeds):
            name = group + (f"~r{k}" if k else "")
            quality = crops + shift + (0.125 if group == "unet_2d~c" and k == 1 else 0.0)
            table = metrics_table(name, quality, positives=64)
            metrics[name], _ = write_model(tmp_path, name, table)
    study = summarize_study(metrics)
    table = study.table.set_index("group")
    assert table.loc["unet_2d~b", "diff_vs_best"] == -0.25
    # tied differences get the exact interval of tied values (never a point), and its p-value
    # (below 0.05 exactly when 0 is outside it): in the Holm family, not NaN
    assert 0.0 < table.loc["unet_2d~b", "p_vs_best"] <= 1.0
    # 3 seeds against 2 cannot be paired: no p-value, and a note says so
    assert np.isnan(table.loc["unet_2d~c", "p_vs_best"])
    assert any(
        note.startswith("unet_2d~c vs unet_2d~a: not tested (p_vs_best empty): 3 vs 2 seeds")
        for note in study.notes
    ), study.notes


def test_only_the_eight_of_the_comparison_are_expected():
    from cellseg.models import list_models
    from cellseg.reporting import expected_models

    expected = expected_models()
    assert len(expected) == 8 and {"unet_2d", "vit_3d"} <= set(expected)
    # the strong baselines and cosem_3d are registered, yet a config without them is complete
    registered = {f"{name}_{dim}" for name, dim in list_models()}
    assert {"resenc_3d", "mednext_3d", "cosem_3d"} <= registered - set(expected)


def test_a_study_says_which_runs_really_start_pretrained(tmp_path):
    # variant b starts from ImageNet weights: the seed ResNet takes 0.04 % of its parameters
    # (scratch in effect), the UNet here 80 %; variant a starts from scratch (nothing recorded)
    metrics, _ = study_runs(tmp_path, seeds=1)
    variants = {"a": {"training": {"init": "scratch"}}, "b": {"training": {"init": "imagenet"}}}
    train = {}
    for run in metrics:
        extra = {}
        if run.endswith("~b"):
            share = 0.000445 if run.startswith("resnet") else 0.8
            extra = {"init": "imagenet", "init_loaded_fraction": share}
            extra["starts_pretrained"] = share >= 0.25
        _, train[run] = write_model(tmp_path, run, pd.read_csv(metrics[run]), **extra)
    study_md = tmp_path / "study.md"
    make_study(
        metrics, variants, {"tau": 1.0}, tmp_path / "study.csv", study_md, tmp_path / "figures",
        train_summaries=train,
    )  # fmt: skip
    text = study_md.read_text()
    assert "\n## Starting weights\n" in text
    lines = [line for line in text.splitlines() if line.startswith("- `") and "init" in line]
    assert lines == [
        "- `unet_2d~b`: init imagenet, 80.0% of the parameters loaded: starts pretrained",
        "- `resnet_2d~b`: init imagenet, 0.04% of the parameters loaded: below the pretrained "
        "share: starts essentially from scratch",
    ]
