"""Tests of cellseg.losses against a naive loop written from SPEC §4, MONAI's TverskyLoss and gradcheck."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from monai.losses import TverskyLoss

from cellseg.classes import CLASSES, NUM_CLASSES
from cellseg.errors import CellsegError
from cellseg.losses import (
    BalancedSoftmaxPartialTverskyLoss,
    InferenceLogitAdjustment,
    OnlineClassFrequency,
    adjusted_probabilities,
    logit_adjustment,
)
from naive_tversky import naive_loss

IMPLS = ["function", "autograd"]


def random_case(
    shape: tuple[int, ...], seed: int, nan_fraction: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    target = (torch.rand(shape, generator=g, dtype=torch.float64) < 0.3).double()
    target[torch.rand(shape, generator=g) < nan_fraction] = float("nan")
    # whole channels unannotated in one sample, and a class with fewer than 10 valid voxels
    target[0, 2] = float("nan")
    target[:, 5] = float("nan")
    target[0, 5].view(-1)[:4] = 1.0
    return logits, target


PRIORS = {
    "flat": [0.1] * NUM_CLASSES,
    "skewed": [0.4, 0.05, 0.03, 0.1, 1e-4, 0.002, 0.01, 0.001, 0.005, 1e-5, 0.0, 0.02, 0.08, 0.9],
    "random": torch.rand(NUM_CLASSES, generator=torch.Generator().manual_seed(3)).tolist(),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("shape", "prior", "tau", "sign", "alpha", "beta"),
    [
        ((2, NUM_CLASSES, 5, 6), "skewed", 1.0, "seed", 0.6, 0.4),
        ((3, NUM_CLASSES, 4, 5), "random", 0.5, "additive", 0.6, 0.4),
        ((2, NUM_CLASSES, 3, 4, 5), "skewed", 1.0, "additive", 0.3, 0.9),
        ((1, NUM_CLASSES, 2, 3, 4), "flat", 2.0, "seed", 0.6, 0.4),
        ((2, NUM_CLASSES, 3, 3, 4), "random", 1.0, "seed", 0.5, 0.5),
    ],
)
def test_matches_naive_loop(
    impl: str, shape: tuple[int, ...], prior: str, tau: float, sign: str, alpha: float, beta: float
) -> None:
    logits, target = random_case(shape, seed=len(shape) * 10 + int(tau * 3))
    loss = BalancedSoftmaxPartialTverskyLoss(
        PRIORS[prior], tau=tau, alpha=alpha, beta=beta, sign=sign, implementation=impl
    )
    value = loss(logits, target)
    expected = naive_loss(logits, target, PRIORS[prior], tau, alpha, beta, 1e-6, 10, sign)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(expected, abs=1e-6, rel=0)
    # class 5 has 4 annotated voxels (< 10): not part of the loss
    assert loss.last_annotated is not None and int(loss.last_annotated[5]) == 4


def test_function_and_autograd_gradients_agree() -> None:
    logits, target = random_case((2, NUM_CLASSES, 4, 5, 6), seed=1)
    grads = []
    for impl in IMPLS:
        z = logits.clone().requires_grad_()
        BalancedSoftmaxPartialTverskyLoss(PRIORS["skewed"], implementation=impl)(
            z, target
        ).backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("chunk_size", [1, 50, 14 * 60 + 3])
def test_chunking_and_layout_do_not_change_the_result(chunk_size: int) -> None:
    logits, target = random_case((2, NUM_CLASSES, 3, 4, 5), seed=12)
    # a non-contiguous view, as a channels-last network output would be
    strided = logits.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3)
    z = strided.clone().requires_grad_()
    loss = BalancedSoftmaxPartialTverskyLoss(PRIORS["random"], chunk_size=chunk_size)
    value = loss(z, target)
    value.backward()
    z_ref = logits.clone().requires_grad_()
    ref = BalancedSoftmaxPartialTverskyLoss(PRIORS["random"], implementation="autograd")(
        z_ref, target
    )
    ref.backward()
    assert value.item() == pytest.approx(ref.item(), abs=1e-12)
    assert z.grad is not None and z.grad.shape == logits.shape
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("smooth", [1e-6, 1e-2])
def test_tau_zero_fully_annotated_equals_monai(smooth: float) -> None:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, NUM_CLASSES, 6, 7, generator=g, dtype=torch.float64)
    target = (torch.rand(2, NUM_CLASSES, 6, 7, generator=g) < 0.4).double()
    ours = BalancedSoftmaxPartialTverskyLoss(PRIORS["skewed"], tau=0.0, smooth=smooth)(
        logits, target
    )
    ref = TverskyLoss(
        sigmoid=True, alpha=0.6, beta=0.4, batch=True, smooth_nr=smooth, smooth_dr=smooth
    )(logits, target)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-12)


@pytest.mark.parametrize("sign", ["seed", "additive"])
def test_gradcheck(sign: str) -> None:
    logits, target = random_case((2, NUM_CLASSES, 2, 3), seed=5, nan_fraction=0.2)
    loss = BalancedSoftmaxPartialTverskyLoss(PRIORS["random"], min_annotated_voxels=2, sign=sign)
    z = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (z,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradient_exactly_zero_on_unannotated_voxels(impl: str) -> None:
    logits, target = random_case((2, NUM_CLASSES, 3, 4, 5), seed=2)
    z = logits.float().requires_grad_()
    BalancedSoftmaxPartialTverskyLoss(PRIORS["skewed"], implementation=impl)(
        z, target.float()
    ).backward()
    assert z.grad is not None
    nan = torch.isnan(target)
    assert torch.all(z.grad[nan] == 0)
    assert torch.count_nonzero(z.grad[~nan]) > 0


def _value_and_grad(
    loss: BalancedSoftmaxPartialTverskyLoss, logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    z = logits.clone().requires_grad_()
    value = loss(z, target)
    assert value.requires_grad, "the loss must stay attached to the graph"
    value.backward()
    assert z.grad is not None
    return value.detach(), z.grad


@pytest.mark.parametrize("impl", IMPLS)
def test_all_nan_target_gives_attached_zero(impl: str) -> None:
    logits = torch.randn(2, NUM_CLASSES, 4, 4)
    target = torch.full_like(logits, float("nan"))
    value, grad = _value_and_grad(
        BalancedSoftmaxPartialTverskyLoss(PRIORS["skewed"], implementation=impl), logits, target
    )
    assert value.item() == 0.0
    assert torch.all(grad == 0)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_class_reaches_min_annotated_voxels(impl: str) -> None:
    logits = torch.randn(1, NUM_CLASSES, 4, 4)
    target = torch.full_like(logits, float("nan"))
    target[0, :, 0, :3] = torch.tensor([1.0, 0.0, 1.0])  # 3 voxels per class < 10
    value, grad = _value_and_grad(
        BalancedSoftmaxPartialTverskyLoss(PRIORS["flat"], implementation=impl), logits, target
    )
    assert value.item() == 0.0
    assert torch.isfinite(grad).all() and torch.all(grad == 0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("label", [0.0, 1.0])
def test_one_annotated_voxel_is_finite(impl: str, label: float) -> None:
    logits = torch.randn(1, NUM_CLASSES, 3, 3)
    target = torch.full_like(logits, float("nan"))
    target[0, 4, 1, 1] = label
    loss = BalancedSoftmaxPartialTverskyLoss(
        PRIORS["skewed"], min_annotated_voxels=1, implementation=impl
    )
    value, grad = _value_and_grad(loss, logits, target)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert grad[0, 4, 1, 1] != 0 or label == 0.0
    assert torch.count_nonzero(grad) <= 1


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_logits_are_finite(impl: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    sign = torch.where(torch.rand(2, NUM_CLASSES, 4, 5, generator=g) < 0.5, -1.0, 1.0)
    logits = (sign * 1e4).to(dtype)
    target = (torch.rand(2, NUM_CLASSES, 4, 5, generator=g) < 0.5).float()
    target[:, ::3, 0] = float("nan")
    value, grad = _value_and_grad(
        BalancedSoftmaxPartialTverskyLoss(PRIORS["skewed"], implementation=impl), logits, target
    )
    assert torch.isfinite(value) and torch.isfinite(grad.float()).all()
    assert grad.dtype == dtype
    # saturated sigmoids: the loss is at its extreme value, mean over classes of 1 - TI in [0, 1]
    assert 0.0 < value.item() < 1.0


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_autocast_reduces_in_float32(impl: str) -> None:
    logits, target = random_case((2, NUM_CLASSES, 8, 8), seed=4)
    z16 = logits.to(torch.bfloat16)
    loss = BalancedSoftmaxPartialTverskyLoss(PRIORS["skewed"], implementation=impl)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value, grad = _value_and_grad(loss, z16, target.float())
    assert value.dtype == torch.float32
    assert grad.dtype == torch.bfloat16
    # same as float32 on the same (bf16-rounded) logits: nothing was reduced in bf16
    ref = loss(z16.float(), target.float())
    assert value.item() == pytest.approx(ref.item(), abs=1e-6)


def naive_torch_loss(
    logits: torch.Tensor, target: torch.Tensor, prior: list[float], tau: float = 1.0
) -> torch.Tensor:
    """SPEC §4 per class with float64 torch ops (seed sign, default options): for gradients."""
    log_f = torch.tensor(prior, dtype=torch.float64).clamp(1e-8, 1 - 1e-8).log()
    a = tau * (log_f - log_f.mean())
    terms = []
    for c in range(logits.shape[1]):
        t = target[:, c].double()
        valid = ~torch.isnan(t)
        if int(valid.sum()) < 10:
            continue
        p = torch.sigmoid(logits[:, c].double() - a[c])[valid]
        t = t[valid]
        tp, fp, fn = (p * t).sum(), (p * (1 - t)).sum(), ((1 - p) * t).sum()
        terms.append(1 - (tp + 1e-6) / (tp + 0.6 * fp + 0.4 * fn + 1e-6))
    return torch.stack(terms).mean()


def test_bf16_gradient_matches_float64_references() -> None:
    logits, target = random_case((2, NUM_CLASSES, 6, 7, 8), seed=21)
    z16 = logits.to(torch.bfloat16)
    # several chunks per sample, so that backward's chunk-by-chunk recomputation is exercised
    loss = BalancedSoftmaxPartialTverskyLoss(PRIORS["skewed"], chunk_size=14 * 50)
    value, grad = _value_and_grad(loss, z16, target.float())
    assert grad.dtype == torch.bfloat16
    # the same bf16-rounded logits in float64: through the autograd path, and a naive loop
    exact = z16.double()
    _, ref_grad = _value_and_grad(
        BalancedSoftmaxPartialTverskyLoss(PRIORS["skewed"], implementation="autograd"),
        exact,
        target,
    )
    z = exact.clone().requires_grad_()
    naive = naive_torch_loss(z, target, PRIORS["skewed"])
    naive.backward()
    assert z.grad is not None
    # the loss keeps its adjustment a_c in float32, the naive loop in float64
    torch.testing.assert_close(ref_grad, z.grad, rtol=1e-5, atol=1e-12)
    assert value.item() == pytest.approx(naive.item(), abs=1e-6)
    # one bf16 rounding (unit roundoff 2**-8) of a float32 gradient, nothing coarser
    scale = float(ref_grad.abs().max())
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1.01 * 2**-8, atol=1e-6 * scale)
    assert float(ref_grad.abs().sum()) > 0


def _saved_for_backward(
    loss: BalancedSoftmaxPartialTverskyLoss,
    logits: torch.Tensor,
    target: torch.Tensor,
    convert: bool = False,
) -> list[torch.Tensor]:
    """Every tensor autograd saves in a forward of ``loss`` (``convert``: on ``logits.float()``)."""
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    z = logits.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        value = loss(z.float() if convert else z, target)
    value.backward()
    return saved


def test_bf16_logits_are_saved_for_backward_as_they_are() -> None:
    logits, target = random_case((2, NUM_CLASSES, 6, 7, 8), seed=22)
    z16, target = logits.to(torch.bfloat16), target.float()
    loss = BalancedSoftmaxPartialTverskyLoss(PRIORS["skewed"], chunk_size=14 * 50)
    target_storage = target.untyped_storage().data_ptr()

    def bytes_beside_target(saved: list[torch.Tensor]) -> int:
        storages = {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in saved
            if t.untyped_storage().data_ptr() != target_storage
        }
        return sum(storages.values())

    saved = _saved_for_backward(loss, z16, target)
    # the bf16 logits (2 bytes a voxel) and per-class sums: no float32 copy (4 bytes a voxel)
    assert z16.numel() * 2 <= bytes_beside_target(saved) < z16.numel() * 4
    full = [t for t in saved if t.numel() == z16.numel()]
    assert {t.dtype for t in full} == {torch.bfloat16, torch.float32}  # logits, the target
    # what a caller's logits.float() costs: the check above sees that copy
    assert bytes_beside_target(_saved_for_backward(loss, z16, target, convert=True)) >= (
        z16.numel() * 4
    )


def test_reductions_and_logging() -> None:
    logits, target = random_case((2, NUM_CLASSES, 5, 6), seed=8)
    per_class = BalancedSoftmaxPartialTverskyLoss(PRIORS["skewed"], reduction="none")(
        logits, target
    )
    assert per_class.shape == (NUM_CLASSES,)
    assert per_class[5] == 0  # inactive
    total = BalancedSoftmaxPartialTverskyLoss(PRIORS["skewed"], reduction="sum")(logits, target)
    mean_loss = BalancedSoftmaxPartialTverskyLoss(PRIORS["skewed"])
    mean = mean_loss(logits, target)
    active = int((mean_loss.last_annotated >= 10).sum())
    assert active == NUM_CLASSES - 1
    assert total.item() == pytest.approx(per_class.sum().item())
    assert mean.item() == pytest.approx(total.item() / active)


def test_logit_adjustment_values() -> None:
    prior = PRIORS["skewed"]
    a = BalancedSoftmaxPartialTverskyLoss(prior, tau=0.7).logit_adjustment()
    logs = [math.log(min(max(f, 1e-8), 1 - 1e-8)) for f in prior]
    expected = [0.7 * (x - sum(logs) / len(logs)) for x in logs]
    assert a.dtype == torch.float32
    assert a.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-5)
    assert a.sum().item() == pytest.approx(0.0, abs=1e-4)
    assert a[9] < 0 < a[0]  # rare classes negative
    torch.testing.assert_close(logit_adjustment(prior, 0.7), a)


@pytest.mark.parametrize("sign", ["seed", "additive"])
def test_inference_adjustment_matches_training(sign: str) -> None:
    """The loss on z equals the unadjusted loss on adjust(z): prediction sees what training fitted."""
    logits, target = random_case((2, NUM_CLASSES, 5, 5), seed=9)
    loss = BalancedSoftmaxPartialTverskyLoss(PRIORS["skewed"], sign=sign)
    plain = BalancedSoftmaxPartialTverskyLoss(PRIORS["skewed"], tau=0.0)
    adjusted = loss.adjust(logits)
    assert plain(adjusted, target).item() == pytest.approx(loss(logits, target).item(), abs=1e-12)
    a = loss.logit_adjustment().double().view(1, -1, 1, 1)
    torch.testing.assert_close(adjusted, logits - a if sign == "seed" else logits + a)
    assert loss.adjust(logits, "none") is logits
    probs = adjusted_probabilities(logits, loss, InferenceLogitAdjustment.TRAIN)
    torch.testing.assert_close(probs, torch.sigmoid(adjusted.float()))
    torch.testing.assert_close(adjusted_probabilities(logits, loss.shift(), "train"), probs)
    torch.testing.assert_close(
        adjusted_probabilities(logits, loss, "none"), torch.sigmoid(logits.float())
    )
    with pytest.raises(ValueError):
        adjusted_probabilities(logits, loss, "raw")


def _frequencies_doc(classes: list[str], priors: list[float]) -> dict[str, object]:
    return {
        "classes": classes,
        "resolution_nm": 8,
        "counted_at": "2025-01-01T00:00:00",
        "per_class": {
            name: {
                "annotated_voxels": 1000,
                "positive_voxels": int(p * 1000),
                "crops": 3,
                "prior": p,
            }
            for name, p in zip(classes, priors, strict=True)
        },
    }


def test_from_class_frequencies(tmp_path) -> None:
    path = tmp_path / "class_frequencies.json"
    priors = [round(0.01 * (i + 1), 3) for i in range(NUM_CLASSES)]
    path.write_text(json.dumps(_frequencies_doc(list(CLASSES), priors)))
    loss = BalancedSoftmaxPartialTverskyLoss.from_class_frequencies(path, tau=0.5)
    assert loss.prior.tolist() == pytest.approx(priors)
    assert loss.tau == 0.5

    swapped = list(CLASSES)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    path.write_text(json.dumps(_frequencies_doc(swapped, priors)))
    with pytest.raises(CellsegError) as err:
        BalancedSoftmaxPartialTverskyLoss.from_class_frequencies(path)
    assert "classes" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CellsegError, match="no such file"):
        BalancedSoftmaxPartialTverskyLoss.from_class_frequencies(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sign": "subtractive"},
        {"smooth": 0.0},
        {"tau": -1.0},
        {"alpha": 0.0, "beta": 0.0},
        {"min_annotated_voxels": -1},
        {"implementation": "triton"},
        {"reduction": "max"},
        {"chunk_size": 0},
        {"prior": [0.5, 1.5]},
        {"prior": [[0.1, 0.2]]},
    ],
)
def test_bad_options_raise(kwargs: dict[str, object]) -> None:
    options: dict[str, object] = {"prior": PRIORS["flat"], **kwargs}
    with pytest.raises(ValueError):
        BalancedSoftmaxPartialTverskyLoss(**options)  # type: ignore[arg-type]


def test_bad_shapes_raise() -> None:
    loss = BalancedSoftmaxPartialTverskyLoss(PRIORS["flat"])
    with pytest.raises(ValueError, match="differ"):
        loss(torch.zeros(1, NUM_CLASSES, 4, 4), torch.zeros(1, NUM_CLASSES, 4, 5))
    with pytest.raises(ValueError, match="channels"):
        loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="expected"):
        loss(torch.zeros(NUM_CLASSES, 4, 4), torch.zeros(NUM_CLASSES, 4, 4))


def test_compile_failure_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    logits, target = random_case((2, NUM_CLASSES, 4, 4), seed=11)
    loss = BalancedSoftmaxPartialTverskyLoss(PRIORS["skewed"], implementation="compile")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = loss(logits, target)
    assert any("torch.compile unavailable" in str(w.message) for w in caught)
    expected = BalancedSoftmaxPartialTverskyLoss(PRIORS["skewed"])(logits, target)
    assert value.item() == pytest.approx(expected.item(), abs=1e-12)


def test_online_class_frequency_ema() -> None:
    tracker = OnlineClassFrequency(update_every=3, momentum=0.5)
    assert torch.all(tracker.logit_adjustment() == 0)  # flat start: no adjustment, as the seed
    target = torch.zeros(2, NUM_CLASSES, 4, 5)
    target[:, 0, :2] = 1.0  # class 0: half positive
    target[:, 1] = float("nan")  # class 1 never annotated: keeps its flat value
    flags = [tracker.update(target) for _ in range(6)]
    assert flags == [False, False, True, False, False, True]
    assert tracker.updates == 2
    flat = 1.0 / NUM_CLASSES
    # two EMA steps towards 0.5 (class 0) and 0 (others)
    assert tracker.frequency[0].item() == pytest.approx(0.25 * flat + 0.75 * 0.5)
    assert tracker.frequency[2].item() == pytest.approx(0.25 * flat)
    assert tracker.frequency[1].item() == pytest.approx(flat)
    state = tracker.state_dict()
    other = OnlineClassFrequency(update_every=3, momentum=0.5)
    other.load_state_dict(state)
    torch.testing.assert_close(other.frequency, tracker.frequency)
    a = tracker.logit_adjustment()
    assert a[0] > 0 > a[2]


def test_bce_term_matches_a_naive_per_class_loop() -> None:
    logits, target = random_case((2, NUM_CLASSES, 5, 6, 7), seed=33)
    prior = PRIORS["skewed"]
    loss = BalancedSoftmaxPartialTverskyLoss(prior, alpha=0.5, beta=0.5, bce_weight=0.7)
    log_f = torch.tensor(prior, dtype=torch.float64).clamp(1e-8, 1 - 1e-8).log()
    a = log_f - log_f.mean()
    terms = []
    for c in range(NUM_CLASSES):
        t = target[:, c].double()
        valid = ~torch.isnan(t)
        if int(valid.sum()) < 10:
            continue
        z = logits[:, c].double()[valid] - a[c]
        p, t = torch.sigmoid(z), t[valid]
        tp, fp, fn = (p * t).sum(), (p * (1 - t)).sum(), ((1 - p) * t).sum()
        dice = 1 - (tp + 1e-6) / (tp + 0.5 * fp + 0.5 * fn + 1e-6)
        # binary cross-entropy written out: -(t log p + (1 - t) log(1 - p))
        bce = -(t * torch.log(p) + (1 - t) * torch.log1p(-p)).mean()
        terms.append(dice + 0.7 * bce)
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(loss(logits.double(), target.double()), expected)
    # weight 0 is the seed's loss
    plain = BalancedSoftmaxPartialTverskyLoss(prior, alpha=0.5, beta=0.5)
    zero = BalancedSoftmaxPartialTverskyLoss(prior, alpha=0.5, beta=0.5, bce_weight=0.0)
    assert torch.equal(zero(logits, target), plain(logits, target))
