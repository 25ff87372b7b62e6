"""Tests of cellseg.metrics against sklearn and hand-computed cases (intervals and paired tests:
tests/test_statistics.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

from cellseg.classes import CLASSES, NUM_CLASSES
from cellseg.metrics import (
    ConfusionMetric,
    aggregate_crops,
    class_summary_table,
    confusion_counts,
    crop_class_table,
    scores_from_counts,
)


def random_arrays(
    shape: tuple[int, ...], seed: int, nan_fraction: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    prob = rng.random(shape).astype(np.float32)
    target = (rng.random(shape) < 0.3).astype(np.float32)
    target[rng.random(shape) < nan_fraction] = np.nan
    target[0, 1] = np.nan  # a class the first sample does not annotate
    return prob, target


@pytest.mark.parametrize("shape", [(2, 5, 9, 11), (2, 4, 5, 6, 7)])
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_against_sklearn(shape: tuple[int, ...], threshold: float) -> None:
    prob, target = random_arrays(shape, seed=sum(shape))
    counts = confusion_counts(prob, target, threshold)
    assert counts.shape == (*shape[:2], 4) and counts.dtype == np.int64
    scores = scores_from_counts(counts)
    checked = 0
    for b in range(shape[0]):
        for c in range(shape[1]):
            valid = ~np.isnan(target[b, c])
            if not valid.any():
                assert counts[b, c].sum() == 0
                continue
            y_true = target[b, c][valid].astype(int)
            y_pred = (prob[b, c][valid] > threshold).astype(int)
            assert counts[b, c].sum() == valid.sum()
            kw = {"zero_division": 0}
            assert scores.dice[b, c] == pytest.approx(f1_score(y_true, y_pred, **kw))
            assert scores.iou[b, c] == pytest.approx(jaccard_score(y_true, y_pred, **kw))
            assert scores.precision[b, c] == pytest.approx(precision_score(y_true, y_pred, **kw))
            assert scores.recall[b, c] == pytest.approx(recall_score(y_true, y_pred, **kw))
            checked += 1
    assert checked == shape[0] * shape[1] - 1


def test_hand_computed_case() -> None:
    # prediction (p > 0.5):  1 1 0 | 0 1 0      target: 1 0 1 | NaN 1 0
    prob = np.array([0.9, 0.6, 0.2, 0.8, 0.7, 0.1]).reshape(1, 1, 2, 3)
    target = np.array([1.0, 0.0, 1.0, np.nan, 1.0, 0.0]).reshape(1, 1, 2, 3)
    counts = confusion_counts(prob, target)
    np.testing.assert_array_equal(counts[0, 0], [2, 1, 1, 1])  # the NaN voxel (p=0.8) is ignored
    s = scores_from_counts(counts[0, 0])
    assert s.dice == pytest.approx(4 / 6)
    assert s.iou == pytest.approx(2 / 4)
    assert s.precision == pytest.approx(2 / 3)
    assert s.recall == pytest.approx(2 / 3)
    assert not s.empty


def test_empty_prediction_and_ground_truth_scores_one() -> None:
    prob = np.zeros((1, 2, 3, 3))
    target = np.zeros((1, 2, 3, 3))
    target[0, 1, 0, 0] = 1.0  # class 1 present but missed
    s = scores_from_counts(confusion_counts(prob, target))
    assert s.empty.tolist() == [[True, False]]
    assert [s.dice[0, 0], s.iou[0, 0], s.precision[0, 0], s.recall[0, 0]] == [1.0, 1.0, 1.0, 1.0]
    # not empty: undefined precision (nothing predicted) is 0, as sklearn's zero_division=0
    assert [s.dice[0, 1], s.precision[0, 1], s.recall[0, 1]] == [0.0, 0.0, 0.0]


def test_pooled_versus_mean_two_crops() -> None:
    # crop A: TP 1, FP 0, FN 0 -> Dice 1; crop B: TP 1, FP 3, FN 5 -> Dice 2/10
    counts = np.array([[[1, 0, 0, 10]], [[1, 3, 5, 10]]])
    agg = aggregate_crops(counts)
    assert agg.mean.dice[0] == pytest.approx((1.0 + 0.2) / 2)
    # pooled: TP 2, FP 3, FN 5 -> 4 / 12
    assert agg.pooled.dice[0] == pytest.approx(4 / 12)
    assert agg.pooled.iou[0] == pytest.approx(2 / 10)
    np.testing.assert_array_equal(agg.counts[0], [2, 3, 5, 20])
    assert agg.n_crops.tolist() == [2]


def test_aggregate_skips_crops_not_annotating_a_class() -> None:
    counts = np.zeros((3, 2, 4), dtype=np.int64)
    counts[0, 0] = [2, 0, 0, 5]  # dice 1
    counts[1, 0] = [0, 0, 0, 7]  # annotated, empty: dice 1, flagged
    counts[2, 0] = [0, 2, 0, 1]  # dice 0
    counts[2, 1] = [1, 1, 0, 0]  # class 1 only in crop 2: dice 2/3
    agg = aggregate_crops(counts)
    assert agg.n_crops.tolist() == [3, 1]
    assert agg.mean.dice.tolist() == pytest.approx([2 / 3, 2 / 3])
    assert agg.mean.empty.tolist() == pytest.approx([1 / 3, 0.0])
    assert agg.pooled.dice[0] == pytest.approx(4 / 6)
    table = crop_class_table(counts, ["a", "b", "c"], ["x", "y"])
    assert list(zip(table["crop"], table["class"], strict=True)) == [
        ("a", "x"),
        ("b", "x"),
        ("c", "x"),
        ("c", "y"),
    ]
    assert table["empty"].tolist() == [False, True, False, False]
    summary = class_summary_table(counts, ["x", "y"])
    assert summary["pooled_dice"].tolist() == pytest.approx([4 / 6, 2 / 3])
    assert summary["n_crops"].tolist() == [3, 1]


def test_class_never_annotated_is_nan_in_mean() -> None:
    agg = aggregate_crops(np.zeros((2, 1, 4), dtype=np.int64))
    assert agg.n_crops.tolist() == [0]
    assert np.isnan(agg.mean.dice[0])
    assert agg.pooled.empty[0]


@pytest.mark.parametrize("shape", [(3, NUM_CLASSES, 6, 7), (2, NUM_CLASSES, 4, 5, 6)])
def test_torch_equals_numpy(shape: tuple[int, ...]) -> None:
    prob, target = random_arrays(shape, seed=1)
    np_counts = confusion_counts(prob, target)
    t_counts = confusion_counts(torch.from_numpy(prob), torch.from_numpy(target))
    assert isinstance(t_counts, torch.Tensor) and t_counts.dtype == torch.int64
    np.testing.assert_array_equal(t_counts.numpy(), np_counts)
    t_scores = scores_from_counts(t_counts)
    n_scores = scores_from_counts(np_counts)
    for t, n in zip(t_scores, n_scores, strict=True):
        np.testing.assert_array_equal(t.numpy(), n)
    # bool predictions and integer (fully annotated) targets
    binary = prob > 0.5
    full = np.nan_to_num(target).astype(np.uint8)
    np.testing.assert_array_equal(
        confusion_counts(torch.from_numpy(binary), torch.from_numpy(full)).numpy(),
        confusion_counts(binary, full),
    )
    assert confusion_counts(binary, full).sum(axis=-1).min() == np.prod(shape[2:])


def test_chunked_numpy_equals_whole() -> None:
    prob, target = random_arrays((1, NUM_CLASSES, 23, 9, 8), seed=2)
    whole = confusion_counts(prob, target)
    chunked = sum(
        confusion_counts(prob[:, :, z : z + 5], target[:, :, z : z + 5]) for z in range(0, 23, 5)
    )
    np.testing.assert_array_equal(chunked, whole)


def test_mixed_types_and_shapes_raise() -> None:
    prob, target = random_arrays((1, 2, 3, 3), seed=0)
    with pytest.raises(ValueError, match="both"):
        confusion_counts(torch.from_numpy(prob), target)
    with pytest.raises(ValueError, match="differ"):
        confusion_counts(prob, target[..., :2])


def test_cumulative_metric_equals_functional() -> None:
    prob, target = random_arrays((6, NUM_CLASSES, 5, 6), seed=3)
    metric = ConfusionMetric(threshold=0.5)
    for i in range(0, 6, 2):
        batch = metric.update(
            torch.from_numpy(prob[i : i + 2]), torch.from_numpy(target[i : i + 2])
        )
        assert batch.shape == (2, NUM_CLASSES, 4)
    got = metric.aggregate()
    expected = aggregate_crops(confusion_counts(prob, target))
    np.testing.assert_array_equal(got.counts, expected.counts)
    np.testing.assert_array_equal(got.n_crops, expected.n_crops)
    for a, b in zip(got.mean, expected.mean, strict=True):
        np.testing.assert_allclose(a, b)
    for a, b in zip(got.pooled, expected.pooled, strict=True):
        np.testing.assert_array_equal(a, b)
    metric.reset()
    assert np.isnan(metric.aggregate().mean.dice).all()


def test_crop_table_defaults_to_the_14_classes() -> None:
    prob, target = random_arrays((2, NUM_CLASSES, 4, 4), seed=6)
    table = crop_class_table(confusion_counts(prob, target), ["c1", "c2"])
    assert set(table["class"]) <= set(CLASSES)
    assert len(table) == 2 * NUM_CLASSES - 1  # sample 0 does not annotate class 1
