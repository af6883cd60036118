"""Replay-set selection rules, replay_count and ReplaySampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uft.errors import UftError
from uft.transfer.replay import REPLAY_RULES, ReplaySampler, replay_count, select_replay


def _blobs(centres: np.ndarray, per: int, seed: int, scale: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + scale * rng.standard_normal((per, centres.shape[1])) for c in centres])
    return x, np.repeat(np.arange(len(centres)), per)


def _check_valid(idx: np.ndarray, n: int, n_source: int) -> None:
    assert idx.dtype == np.int64 and idx.shape == (n,)
    assert np.all(np.diff(idx) > 0)  # sorted and unique
    assert idx.min() >= 0 and idx.max() < n_source


def test_rules_tuple():
    assert REPLAY_RULES == ("uniform", "class_balanced", "kmeans", "nearest_target")


def test_uniform_deterministic_and_seed_dependent():
    a = select_replay("uniform", 20, seed=3, source_size=100)
    b = select_replay("uniform", 20, seed=3, source_size=100)
    c = select_replay("uniform", 20, seed=4, source_size=100)
    _check_valid(a, 20, 100)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # source size may come from labels instead
    _check_valid(select_replay("uniform", 5, seed=0, labels=np.zeros(10)), 5, 10)
    np.testing.assert_array_equal(select_replay("uniform", 10, seed=0, source_size=10), np.arange(10))


def test_class_balanced_equal_counts_and_remainder():
    labels = np.repeat([0, 1, 2, 3], 25)
    idx = select_replay("class_balanced", 14, seed=0, labels=labels)
    _check_valid(idx, 14, 100)
    # 14 = 4 * 3 + 2: the remainder goes to the two lowest labels
    np.testing.assert_array_equal(np.bincount(labels[idx], minlength=4), [4, 4, 3, 3])
    np.testing.assert_array_equal(idx, select_replay("class_balanced", 14, seed=0, labels=labels))


def test_class_balanced_small_class_gives_all():
    labels = np.array([7] * 2 + [3] * 30 + [5] * 30)  # class 7 has only 2 rows, labels unsorted
    idx = select_replay("class_balanced", 21, seed=1, labels=labels)
    _check_valid(idx, 21, len(labels))
    counts = {c: int((labels[idx] == c).sum()) for c in (3, 5, 7)}
    assert counts == {7: 2, 3: 10, 5: 9}  # 19 left over for 2 classes: 10 + 9, lower label first


def test_kmeans_picks_one_per_blob_near_centre():
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x, blob = _blobs(centres, 30, seed=0)
    idx = select_replay("kmeans", 3, seed=0, source_features=x)
    _check_valid(idx, 3, len(x))
    assert sorted(blob[idx].tolist()) == [0, 1, 2]
    for i in idx:  # the pick is close to its blob's centre (blob std 0.05 per axis)
        assert np.linalg.norm(x[i] - centres[blob[i]]) < 0.1
    np.testing.assert_array_equal(idx, select_replay("kmeans", 3, seed=0, source_features=x))


def test_kmeans_with_duplicate_points_still_unique():
    x = np.array([[0.0, 0.0]] * 5 + [[1.0, 1.0]] * 5)  # 2 distinct points, ask for 4 centres
    idx = select_replay("kmeans", 4, seed=0, source_features=x)
    _check_valid(idx, 4, 10)


def test_kmeans_large_settings_path(monkeypatch):
    # The MiniBatchKMeans + random-seeding path (used for big sources / many centres) on a small input.
    import uft.transfer.replay as replay

    monkeypatch.setattr(replay, "_MINIBATCH_ABOVE", 50)
    monkeypatch.setattr(replay, "_PLUSPLUS_UP_TO", 2)
    x, _ = _blobs(np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), 30, seed=0)
    idx = select_replay("kmeans", 12, seed=0, source_features=x)
    _check_valid(idx, 12, len(x))
    np.testing.assert_array_equal(idx, select_replay("kmeans", 12, seed=0, source_features=x))


def test_nearest_target_picks_closest_source_cluster():
    # Source: three clusters in distinct directions; target sits in the direction of cluster 2.
    centres = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    src, blob = _blobs(centres, 20, seed=1)
    tgt, _ = _blobs(np.array([[0.1, 0.1, 3.0]]), 5, seed=2)
    idx = select_replay("nearest_target", 10, seed=0, source_features=src, target_features=tgt)
    _check_valid(idx, 10, len(src))
    assert set(blob[idx].tolist()) == {2}


def test_nearest_target_round_robin_covers_every_target_point():
    # Two target points far apart, each next to a different source cluster: with n = 2 both clusters
    # must be represented (round-robin), although cluster 0 has many more rows.
    src, blob = _blobs(np.array([[1.0, 0.0], [0.0, 1.0]]), 10, seed=3)
    src = np.concatenate([src, src[:10]])  # cluster 0 twice as large
    blob = np.concatenate([blob, blob[:10]])
    tgt = np.array([[1.0, 0.05], [0.05, 1.0]])
    idx = select_replay("nearest_target", 2, seed=0, source_features=src, target_features=tgt)
    assert sorted(blob[idx].tolist()) == [0, 1]
    # n larger than the first rounds can give forces deeper ranks; still n distinct rows
    _check_valid(select_replay("nearest_target", 29, seed=0, source_features=src, target_features=tgt), 29, 30)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(rule="bogus", n=1, source_size=5), "uniform, class_balanced, kmeans, nearest_target"),
        (dict(rule="uniform", n=0, source_size=5), r"n=0 .*\[1, 5\]"),
        (dict(rule="uniform", n=6, source_size=5), r"n=6 .*\[1, 5\]"),
        (dict(rule="class_balanced", n=2, source_size=5), "needs labels"),
        (dict(rule="kmeans", n=2, source_size=5), "needs source_features"),
        (dict(rule="nearest_target", n=2, source_features=np.ones((5, 2))), "needs target_features"),
        (dict(rule="nearest_target", n=2, source_features=np.ones((5, 2)), target_features=np.ones((3, 4))), "dimension"),
        (dict(rule="class_balanced", n=2, labels=np.zeros(4), source_features=np.ones((5, 2))), "disagree"),
        (dict(rule="uniform", n=2), "source size"),
        (dict(rule="kmeans", n=2, source_features=np.ones(5)), "2-D"),
        (dict(rule="kmeans", n=2, source_features=np.full((5, 2), np.nan)), "NaN"),
    ],
)
def test_select_replay_errors(kwargs, match):
    with pytest.raises(UftError, match=match):
        select_replay(kwargs.pop("rule"), kwargs.pop("n"), seed=0, **kwargs)


def test_replay_count():
    assert replay_count(64, 0.25) == 16
    assert replay_count(10, 0.1) == 1
    assert replay_count(30, 0.1) == 3  # not 4 from float noise
    assert replay_count(7, 0.5) == 4  # ceil
    assert replay_count(8, 0.0) == 0
    assert replay_count(8, 1.0) == 8
    with pytest.raises(UftError, match="replay_ratio=1.5"):
        replay_count(8, 1.5)
    with pytest.raises(UftError, match="replay_ratio"):
        replay_count(8, -0.1)
    with pytest.raises(UftError, match="batch_size"):
        replay_count(0, 0.5)


def test_replay_sampler_draws_from_set_reproducibly():
    s = np.array([3, 17, 42, 99])
    a = ReplaySampler(s, torch.Generator().manual_seed(0))
    b = ReplaySampler(s, torch.Generator().manual_seed(0))
    da, db = a.draw(4000), b.draw(4000)
    assert da.dtype == torch.int64 and da.shape == (4000,)
    torch.testing.assert_close(da, db)
    assert set(da.tolist()) <= set(s.tolist())
    counts = torch.bincount(da)[torch.as_tensor(s)]
    assert counts.min() > 850 and counts.max() < 1150  # ~1000 each: uniform over S
    assert a.draw(0).shape == (0,)
    with pytest.raises(UftError, match="non-empty"):
        ReplaySampler(np.array([], dtype=np.int64), torch.Generator())
    with pytest.raises(UftError, match="k=-1"):
        a.draw(-1)
