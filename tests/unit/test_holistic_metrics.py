"""Holistic-transfer metrics vs hand-computed cases and brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uft.errors import UftError
from uft.evaluate.holistic_metrics import (
    ausuc,
    holistic_accuracies,
    ncm_accuracy,
    ncm_logits,
    per_class_accuracy,
    seen_unseen_curve,
)


def test_holistic_accuracies_hand_case():
    # C = 4, S = {0, 1}, U = {2, 3}.
    logits = torch.tensor(
        [
            [5.0, 1.0, 0.0, 0.0],  # y=0: pred 0 ✓ ; S-argmax 0 ✓
            [1.0, 0.0, 3.0, 0.0],  # y=1: pred 2 ✗ ; S-argmax 0 ✗
            [0.0, 2.0, 9.0, 0.0],  # y=1: pred 2 ✗ ; S-argmax 1 ✓
            [0.0, 0.0, 1.0, 4.0],  # y=3: pred 3 ✓ ; U-argmax 3 ✓
            [7.0, 0.0, 2.0, 1.0],  # y=2: pred 0 ✗ ; U-argmax 2 ✓
            [7.0, 0.0, 1.0, 2.0],  # y=2: pred 0 ✗ ; U-argmax 3 ✗
        ]
    )
    labels = torch.tensor([0, 1, 1, 3, 2, 2])
    acc = holistic_accuracies(logits, labels, seen=[0, 1])
    assert acc["overall"] == pytest.approx(2 / 6)
    assert acc["seen"] == pytest.approx(1 / 3)
    assert acc["unseen"] == pytest.approx(1 / 3)
    assert acc["seen_seen"] == pytest.approx(2 / 3)
    assert acc["unseen_unseen"] == pytest.approx(2 / 3)
    # numpy input gives the same answer
    assert holistic_accuracies(logits.numpy(), labels.numpy(), [1, 0]) == acc


def test_holistic_accuracies_empty_subset_is_nan():
    acc = holistic_accuracies(np.eye(3), np.array([0, 1, 1]), seen=[0, 1])
    assert acc["overall"] == pytest.approx(2 / 3)
    assert math.isnan(acc["unseen"]) and math.isnan(acc["unseen_unseen"])


def test_per_class_accuracy_hand_case():
    logits = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]], dtype=float)
    labels = np.array([0, 0, 1, 1])
    pc = per_class_accuracy(logits, labels, 3)
    assert pc[0] == 0.5 and pc[1] == 0.5 and math.isnan(pc[2])


def test_bad_inputs_raise_uft_error():
    with pytest.raises(UftError, match="logits"):
        holistic_accuracies(np.zeros((3, 2)), np.zeros(4, dtype=int), [0])
    with pytest.raises(UftError, match="seen classes"):
        holistic_accuracies(np.zeros((3, 2)), np.zeros(3, dtype=int), [5])
    with pytest.raises(UftError, match="labels"):
        holistic_accuracies(np.zeros((3, 2)), np.array([0, 1, 2]), [0])
    with pytest.raises(UftError, match="AUSUC needs both"):
        ausuc(np.zeros((3, 2)), np.zeros(3, dtype=int), [0])


def test_ausuc_hand_case_steps():
    # C = 2, S = {0}, U = {1}; flip point g = z0 - z1. Seen samples flip at 1 and 3, unseen at 0 and 2.
    # Curve (unseen_acc, seen_acc): (0,1) → (.5,1) → (.5,.5) → (1,.5) → (1,0); area .5 + .25 = .75.
    logits = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    labels = np.array([0, 0, 1, 1])
    assert ausuc(logits, labels, [0]) == pytest.approx(0.75)
    # perfectly separable → 1
    assert ausuc(np.array([[2.0, 0], [3.0, 0], [0.0, 1], [0.0, 2]]), labels, [0]) == pytest.approx(1.0)


def test_ausuc_hand_case_tie_is_diagonal():
    # A seen and an unseen sample flip at the same γ: the curve jumps diagonally (0,1) → (1,0).
    logits = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert ausuc(logits, np.array([0, 1]), [0]) == pytest.approx(0.5)


def test_ausuc_within_subset_mistakes_cap_the_curve():
    # C = 3, S = {0}, U = {1, 2}. Second unseen sample has the wrong U-argmax: unseen_unseen = 0.5.
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    labels = np.array([0, 1, 2])
    g, s, u = seen_unseen_curve(logits, labels, [0])
    assert s[0] == 1.0 and u[0] == 0.0 and s[-1] == 0.0 and u[-1] == 0.5
    assert np.all(np.diff(g) > 0)
    assert ausuc(logits, labels, [0]) == pytest.approx(0.5)  # seen stays 1 until unseen reaches .5


def _brute_force_ausuc(logits: np.ndarray, labels: np.ndarray, seen: list[int], gammas: np.ndarray) -> float:
    """Add each γ to the unseen logits, take the all-class argmax, integrate with np.trapezoid."""
    umask = np.ones(logits.shape[1], dtype=bool)
    umask[seen] = False
    row_s = ~umask[labels]
    xs, ys = [], []
    for g in gammas:
        pred = (logits + g * umask).argmax(1)
        ys.append((pred[row_s] == labels[row_s]).mean())
        xs.append((pred[~row_s] == labels[~row_s]).mean())
    return float(np.trapezoid(ys, xs))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ausuc_matches_brute_force_on_lattice(seed):
    # Integer logits → every flip point is an integer (exactly, with many ties); a γ grid offset by
    # 0.5 visits every region between flip points, so the brute force is exact.
    rng = np.random.default_rng(seed)
    n, c = 60, 6
    logits = rng.integers(-20, 21, size=(n, c)).astype(float)
    labels = rng.integers(0, c, size=n)
    labels[:2] = [0, 4]  # both seen- and unseen-labelled samples present
    seen = [0, 2, 3]
    gammas = np.arange(-50.5, 51.0, 1.0)
    assert ausuc(logits, labels, seen) == pytest.approx(_brute_force_ausuc(logits, labels, seen, gammas), abs=1e-12)


def test_ausuc_matches_fine_grid_on_continuous_logits():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(40, 5))
    labels = np.arange(40) % 5
    logits[np.arange(40), labels] += 1.0  # better than chance so the curve is not trivial
    seen = [1, 3]
    exact = ausuc(logits, labels, seen)
    gammas = np.linspace(-8, 8, 40001)
    assert exact == pytest.approx(_brute_force_ausuc(logits, labels, seen, gammas), abs=2e-3)
    assert 0.0 <= exact <= 1.0
    # invariant to a calibration shift of the unseen logits
    shifted = logits.copy()
    shifted[:, [0, 2, 4]] += 1.7
    assert ausuc(shifted, labels, seen) == pytest.approx(exact, abs=1e-12)


def test_ncm_toy_features():
    # Two classes along the axes; class means are re-normalised so the scale of a sample is moot.
    train = np.array([[1.0, 0.1], [3.0, -0.1], [0.0, 2.0], [0.2, 1.0]])
    train_y = np.array([0, 0, 1, 1])
    test = np.array([[5.0, 1.0], [0.1, 0.2], [1.0, 0.9], [0.9, 1.0]])
    test_y = np.array([0, 1, 0, 0])
    scores = ncm_logits(train, train_y, test, num_classes=3)
    mean0 = (np.array([1.0, 0.1]) / np.hypot(1, 0.1) + np.array([1.0, -1 / 30]) / np.hypot(1, 1 / 30)) / 2
    mean0 /= np.linalg.norm(mean0)
    assert scores[0, 0] == pytest.approx(test[0] @ mean0 / np.linalg.norm(test[0]))
    assert np.all(np.isneginf(scores[:, 2]))  # class 2 has no train samples: never predicted
    # last test sample is closer in angle to class 1's mean → 3 of 4 correct
    assert ncm_accuracy(train, train_y, test, test_y, 3) == pytest.approx(0.75)
    assert ncm_accuracy(10 * train, train_y, 0.1 * test, test_y, 3) == pytest.approx(0.75)
