"""SPEC §4's loss written out voxel by voxel in float64 Python: the naive reference the loss
tests (classes) and the group tests (classes and groups) compare
:class:`cellseg.losses.BalancedSoftmaxPartialTverskyLoss` with.

A module of its own (not conftest) so tests of every folder import it by a unique name
(``pythonpath = ["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

import math

import torch

from cellseg.classes import CLASS_INDEX, GROUP_NAMES, GROUPS


def naive_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    prior: list[float],
    tau: float,
    alpha: float,
    beta: float,
    smooth: float,
    min_voxels: int,
    sign: str = "seed",
) -> float:
    """Per channel, over samples and voxels: each class (``p = sigmoid(z -/+ a)``), then each
    group the target has a channel for (``p = 1 - prod(1 - p_member)``); a channel with fewer
    than ``min_voxels`` annotated voxels is left out, and the loss is the mean of the rest."""
    n_classes = logits.shape[1]
    log_f = [math.log(min(max(f, 1e-8), 1 - 1e-8)) for f in prior]
    mean_log = sum(log_f) / n_classes
    a = [tau * (lf - mean_log) for lf in log_f]
    flat_z = logits.reshape(logits.shape[0], n_classes, -1).tolist()
    flat_t = target.reshape(target.shape[0], target.shape[1], -1).tolist()
    channels = [(c, (c,)) for c in range(n_classes)] + [
        (n_classes + g, tuple(CLASS_INDEX[m] for m in GROUPS[name]))
        for g, name in enumerate(GROUP_NAMES)
    ]

    def probability(z: float, m: int) -> float:
        return 1.0 / (1.0 + math.exp(-(z - a[m] if sign == "seed" else z + a[m])))

    terms = []
    for channel, members in channels:
        if channel >= target.shape[1]:
            continue
        tp = fp = fn = 0.0
        n_valid = 0
        for b in range(len(flat_z)):
            for v in range(len(flat_z[b][0])):
                t = flat_t[b][channel][v]
                if math.isnan(t):
                    continue
                n_valid += 1
                if len(members) == 1:
                    p = probability(flat_z[b][channel][v], channel)
                else:
                    none = 1.0
                    for m in members:
                        none *= 1.0 - probability(flat_z[b][m][v], m)
                    p = 1.0 - none
                tp += p * t
                fp += p * (1 - t)
                fn += (1 - p) * t
        if n_valid >= min_voxels:
            terms.append(1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth))
    return sum(terms) / len(terms) if terms else 0.0
