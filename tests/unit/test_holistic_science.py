"""Science acceptance tests on the bundled pair (MNIST → UCI optdigits, 16 px, seen classes 0-4).

They check that the holistic experiment measures what it claims, not code paths: the source
classifier is far above chance on the target (a collapsed start once made every row moot), naive
finetuning on the seen classes loses unseen-class accuracy relative to that start, and at least one
unseen-preserving method beats naive finetuning overall, and PCV picks γ on val images as published
(whether its γ keeps seen accuracy above naive+ALG's is an expected failure on this pair, with the
mechanism tested beside it). Decisions (the start check, PCV's γ) read the val split; the test split
only reports. The fast version (a random-init narrow
TinyConvNet, 2,000 MNIST images, short schedules) runs in ``make test``; the slow one is the
benchmark's configuration (full data, 3 seeds, the default recipe) and the README's ≥ 0.7 goal.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uft.data.ingest import _subset, resize_images, stratified_split
from uft.data.sources import load_source, vendor_dir
from uft.models.encoders import build_encoder
from uft.transfer.holistic import (apply_calibration, check_start, filter_seen, finetune, make_config, run_holistic,
                                   train_source_classifier)

SEEN = [0, 1, 2, 3, 4]
C = 10
#: Methods that aim to keep the unseen classes (METHODS.md §3), as HolisticConfig overrides; the
#: fast version runs the two cheapest (PCV alone costs a finetune per split).
PRESERVING = {"frozen_head": {"method": "frozen_head"}, "distill": {"method": "distill"},
              "naive+ALG": {"method": "naive", "calibration": "alg"}, "naive+PCV": {"method": "naive", "calibration": "pcv"}}
PRESERVING_FAST = ("frozen_head", "distill")

pytestmark = pytest.mark.skipif(not (vendor_dir() / "mnist").is_dir(), reason="bundled MNIST not installed (make install)")


def _floats(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(resize_images(images, 16, 1)).permute(0, 3, 1, 2).float().div_(255.0)


def bundled_pair(source_limit: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The pipeline's data path (framing auto, 16 px, target split 50/50 seed 0, 20 % of the
    non-test rows as val) without a store."""
    src = load_source("mnist", image_size=16, channels=1)
    keep = _subset(src.labels, source_limit, 0)
    tgt = load_source("optdigits", image_size=16, channels=1)
    split = stratified_split(tgt.labels, 0.5, 0, val_fraction=0.2)
    xt, yt = _floats(tgt.images), torch.from_numpy(tgt.labels)
    part = {name: torch.from_numpy(split == name) for name in ("train", "val", "test")}
    return {"source": (_floats(src.images[keep]), torch.from_numpy(src.labels[keep])),
            **{name: (xt[m], yt[m]) for name, m in part.items()}}


def source_model(data, seed: int, width: int, **cfg):
    torch.manual_seed(seed)
    enc = build_encoder("tiny", in_channels=1, width=width)
    head = train_source_classifier(enc, *data["source"], C, make_config(seed=seed, **cfg))
    return enc, head


# ----------------------------------------------------------------------------- fast (make test)

FAST = {"source_steps": 150, "steps": 60}


@pytest.fixture(scope="module")
def fast():
    torch.set_num_threads(1)
    data = bundled_pair(source_limit=2000)
    enc, head = source_model(data, 0, 16, **FAST)
    rows = {name: run_holistic(make_config(seed=0, **FAST, **kw), enc, head, data["train"], data["test"], SEEN, C)
            for name, kw in {"source": {"method": "source"}, **{n: PRESERVING[n] for n in PRESERVING_FAST}}.items()}
    # naive and its two calibrations share one finetune (deterministic in the seed)
    naive = finetune(enc, head, *filter_seen(*data["train"], SEEN), SEEN, make_config(seed=0, **FAST))
    for name, cal in (("naive", "none"), ("naive+ALG", "alg"), ("naive+PCV", "pcv")):
        rows[name] = run_holistic(make_config(seed=0, calibration=cal, **FAST), enc, head, data["train"], data["test"],
                                  SEEN, C, target_val=data["val"], adapted=naive)
    return data, enc, head, rows


def test_source_classifier_far_above_chance_on_target(fast):
    data, enc, head, rows = fast
    c = check_start(enc, head, *data["val"], C)  # the check reads val; the test split only reports
    assert not c["degenerate"], c["reasons"]
    assert c["accuracy"] >= 0.4, c  # chance is 0.10; 0.60 measured (0.097 before the recipe and framing fixes)
    assert rows["source"]["unseen"] >= 0.3, rows["source"]  # something to preserve (0.57 measured)


def test_naive_finetuning_forgets_unseen_classes(fast):
    _, _, _, rows = fast
    assert rows["naive"]["seen"] > rows["source"]["seen"]  # it does adapt to the seen classes ...
    assert rows["naive"]["unseen"] < rows["source"]["unseen"] - 0.2  # ... and loses the unseen ones


def test_an_unseen_preserving_method_beats_naive_overall(fast):
    _, _, _, rows = fast
    best = max(PRESERVING_FAST, key=lambda n: rows[n]["overall"])
    assert rows[best]["overall"] > rows["naive"]["overall"] + 0.02, {n: rows[n]["overall"] for n in rows}
    assert rows[best]["unseen"] > rows["naive"]["unseen"]


def test_pcv_picks_gamma_on_val_and_records_what_it_did(fast):
    """PCV as published (distinct halves, floor = the source model's accuracy on the held-out half's
    val images, infeasible splits dropped, ALG when none is feasible), from naive's own finetune."""
    _, _, _, rows = fast
    pcv, alg, naive = rows["naive+PCV"], rows["naive+ALG"], rows["naive"]
    p = pcv["pcv"]
    assert len(p["splits"]) == 3 and len({tuple(sp["trained"]) for sp in p["splits"]}) == 3
    for sp in p["splits"]:
        assert 0.0 < sp["floor"] <= 1.0 and 0 < sp["n_heldout"] < sp["n_val"]
    feasible = [sp["gamma"] for sp in p["splits"] if sp["feasible"]]
    assert p["feasible_splits"] == len(feasible) and pcv["pcv_fallback"] == float(not feasible)
    assert pcv["gamma"] == pytest.approx(float(np.mean(feasible)) if feasible else alg["gamma"])
    assert pcv["gamma_alg"] == alg["gamma"] and pcv["gamma_split"] == ("val" if feasible else "train (ALG fallback)")
    assert pcv["ausuc"] == alg["ausuc"] == naive["ausuc"]  # one finetune; AUSUC ignores γ


@pytest.mark.xfail(strict=True, reason="PCV's floor (the source model's held-out-half accuracy) needs a γ above "
                   "ALG's on this pair (8.7 vs 4.1 at seed 0 in the fast configuration), and seen accuracy cannot "
                   "rise with γ; see test_why_pcv_trades_seen_for_unseen_here and docs/results.md")
def test_pcv_keeps_seen_accuracy_above_naive_alg(fast):
    _, _, _, rows = fast
    assert rows["naive+PCV"]["seen"] > rows["naive+ALG"]["seen"]


def test_why_pcv_trades_seen_for_unseen_here(fast):
    """The mechanism behind the xfail above: with all-class argmax, raising γ only moves predictions
    from seen to unseen classes, so seen accuracy is non-increasing in γ (checked on a sweep of the
    naive model's test logits); PCV's γ is above ALG's, so it buys unseen accuracy with seen."""
    data, enc, head, rows = fast
    naive = finetune(enc, head, *filter_seen(*data["train"], SEEN), SEEN, make_config(seed=0, **FAST))
    from uft.evaluate.holistic_metrics import holistic_accuracies
    from uft.transfer.holistic import predict

    z = predict(*naive, data["test"][0])[1]
    seen_acc = [holistic_accuracies(apply_calibration(z, SEEN, g), data["test"][1], SEEN)["seen"]
                for g in np.linspace(0, 15, 31)]
    assert all(b <= a + 1e-12 for a, b in zip(seen_acc, seen_acc[1:])) and seen_acc[0] > seen_acc[-1]
    pcv, alg = rows["naive+PCV"], rows["naive+ALG"]
    assert pcv["gamma"] > alg["gamma"]
    assert pcv["seen"] <= alg["seen"] and pcv["unseen"] > alg["unseen"]


# ----------------------------------------------------------------------------- full (slow)


@pytest.mark.slow
def test_full_recipe_meets_the_goal_over_three_seeds():
    """Default recipe, all 9,000 MNIST training images at width 32 (random init; the benchmark
    starts from an SSL-pretrained encoder): ≥ 0.7 mean overall on the UCI test split, every seed far
    above chance, naive forgets and an unseen-preserving method beats it, on every seed."""
    torch.set_num_threads(1)
    data = bundled_pair()
    n = len(data["source"][1])
    keep = torch.from_numpy(stratified_split(data["source"][1].numpy(), 0.1, 0) == "train")  # the pipeline's 90 %
    data["source"] = (data["source"][0][keep], data["source"][1][keep])
    assert len(data["source"][1]) < n
    accs = []
    for seed in (0, 1, 2):
        enc, head = source_model(data, seed, 32)
        c = check_start(enc, head, *data["val"], C)
        assert not c["degenerate"], (seed, c["reasons"])
        accs.append(c["accuracy"])
        rows = {name: run_holistic(make_config(seed=seed, **kw), enc, head, data["train"], data["test"], SEEN, C,
                                   target_val=data["val"])
                for name, kw in {"source": {"method": "source"}, "naive": {"method": "naive"}, **PRESERVING}.items()}
        assert rows["naive"]["unseen"] < rows["source"]["unseen"] - 0.2, seed
        assert max(rows[n]["overall"] for n in PRESERVING) > rows["naive"]["overall"] + 0.02, seed
    assert float(np.mean(accs)) >= 0.7, accs
