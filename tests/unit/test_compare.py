"""`uft compare` on real MLflow runs (sqlite in a temp dir), created with uft's own tracking scheme."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from uft import tracking
from uft.compare import aggregate, compare, fetch_runs, group_runs, merge_params_metrics, plot, render
from uft.errors import UftError

RNG = np.random.default_rng(7)
PLAN_B = "{'op': 'mixup', 'alpha': 1.0, 'fraction': 0.5, 'pairing': 'target_target'}"


def _pipeline_run(exp: str, prid: str, *, parent_params: dict, steps: dict, metrics: dict, finished: bool = True) -> str:
    """A pipeline run as the steps leave it: parent (tag uft.step=pipeline) + nested step runs."""
    client = tracking._client()
    eid = tracking.experiment_id(exp)
    parent = tracking.parent_run_id(exp, prid)
    for k, v in parent_params.items():
        client.log_param(parent, k, v)
    for k, v in metrics.items():
        client.log_metric(parent, k, v)
    for step, (params, step_metrics) in steps.items():
        rid = tracking.get_or_create_run(eid, prid, step, parent_id=parent)
        for k, v in params.items():
            client.log_param(rid, k, v)
        for k, v in step_metrics.items():
            client.log_metric(rid, k, v)
        client.set_terminated(rid)
    if finished:
        client.set_terminated(parent)
    return parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Method A logs its config on the parent; method B only on its step runs (the fallback path)."""
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("mlflow")
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{d / 'mlflow.db'}")
    mp.setenv("UFT_MLFLOW_ARTIFACTS", str(d / "artifacts"))
    logged: dict[str, dict] = {"a": {}, "b": {}}
    ids: dict[str, str] = {}
    for seed in (0, 1, 2):
        m = {"finetuned_knn": float(RNG.uniform(0.6, 0.9)), "base_knn": float(RNG.uniform(0.4, 0.6)),
             "finetuned_linear_1shot_std": 0.05}
        logged["a"][seed] = m
        ids[f"a-{seed}"] = _pipeline_run("exp", f"a-{seed}", metrics=m,
                                         parent_params={"ssl_method": "simclr", "replay_ratio": "0.5", "mix_op": "none",
                                                        "replay_rule": "uniform", "replay_size": "2000",
                                                        "mix_pairing": "target_source", "seed": str(seed)},
                                         steps={"ssl_finetune": ({"method": "simclr", "seed": str(seed)}, {})})
    for seed in (0, 1):
        m = {"finetuned_knn": float(RNG.uniform(0.6, 0.9)), "base_knn": float(RNG.uniform(0.4, 0.6))}
        lin = float(RNG.uniform(0.5, 0.7))
        logged["b"][seed] = {**m, "linear_eval_finetuned.linear_full": lin}
        ids[f"b-{seed}"] = _pipeline_run("exp", f"b-{seed}", metrics=m, parent_params={}, steps={
            "ssl_finetune": ({"method": "byol", "replay_ratio": "0.0", "plan": PLAN_B, "seed": str(seed)}, {"ssl_loss": 1.0}),
            "subsample_source": ({"rule": "uniform", "size": "2000", "seed": str(seed)}, {}),
            "linear_eval_finetuned": ({"seed": str(seed)}, {"linear_full": lin}),
        })
    ids["c-0"] = _pipeline_run("exp", "c-0", metrics={"finetuned_knn": 0.1}, finished=False,
                               parent_params={"ssl_method": "moco", "replay_ratio": "0.5", "mix_op": "none", "seed": "0"},
                               steps={})
    ids["other"] = _pipeline_run("other", "a-0", metrics={"finetuned_knn": 0.3},
                                 parent_params={"ssl_method": "simclr", "seed": "0"}, steps={})
    client = tracking._client()
    ids["b-1.ssl_finetune"] = tracking.find_run(tracking.experiment_id("exp"), "b-1", "ssl_finetune").info.run_id
    client.create_experiment("empty")
    yield {"ids": ids, "logged": logged}
    mp.undo()


def _stats(values):
    return float(np.mean(values)), float(np.std(values, ddof=1))


def test_groups_by_method_with_mean_std_over_seeds(runs):
    cmp = compare(experiment="exp")
    assert cmp.group_keys == ["ssl_method", "replay_rule", "replay_size", "replay_ratio", "mix_op", "mix_pairing"]
    assert [g.key["ssl_method"] for g in cmp.groups] == ["byol", "simclr"]  # c-0 is unfinished: left out
    b, a = cmp.groups
    # B's config came from its step runs: method, replay_ratio, the plan's op/pairing, subsample rule/size
    assert b.key == {"ssl_method": "byol", "replay_rule": "uniform", "replay_size": "2000", "replay_ratio": "0.0",
                     "mix_op": "mixup", "mix_pairing": "target_target"}
    assert a.key["replay_ratio"] == "0.5" and a.key["mix_op"] == "none"
    assert a.seeds == ["0", "1", "2"] and b.seeds == ["0", "1"]
    assert cmp.metrics == ["base_knn", "finetuned_knn"]  # parent metrics, *_std left out
    for g, name in ((a, "a"), (b, "b")):
        for metric in cmp.metrics:
            mean, std = _stats([m[metric] for m in runs["logged"][name].values()])
            assert g.stats[metric]["mean"] == pytest.approx(mean)
            assert g.stats[metric]["std"] == pytest.approx(std)
            assert g.stats[metric]["n"] == len(runs["logged"][name])
    assert len(compare(experiment="exp", include_unfinished=True).groups) == 3


def test_runs_by_id_step_metrics_and_custom_grouping(runs):
    ids = runs["ids"]
    # a pipeline run id, an MLflow parent id, a step run id (→ its pipeline run), and a repeat
    got = fetch_runs(["b-0", ids["a-1"], ids["b-1.ssl_finetune"], "b-0"], "exp")
    assert sorted(r.pipeline_run_id for r in got) == ["a-1", "b-0", "b-1"]
    cmp = compare(["b-0", "b-1"], "exp", metrics=["linear_eval_*"])
    assert cmp.metrics == ["linear_eval_finetuned.linear_full"]
    (g,) = cmp.groups
    mean, std = _stats([m["linear_eval_finetuned.linear_full"] for m in runs["logged"]["b"].values()])
    assert g.stats[cmp.metrics[0]]["mean"] == pytest.approx(mean) and g.stats[cmp.metrics[0]]["std"] == pytest.approx(std)
    by_seed = compare(experiment="exp", group_by=["seed"], show_params=["ssl_method"])
    assert [g.key["seed"] for g in by_seed.groups] == ["0", "1", "2"]
    assert by_seed.groups[0].params["ssl_method"] == "byol|simclr" and by_seed.groups[2].params["ssl_method"] == "simclr"


def test_formats_and_plot(runs, tmp_path):
    cmp = compare(experiment="exp")
    md = render(cmp, "markdown")
    assert "| ssl_method | byol | simclr |" in md and "| seeds | 0,1 | 0,1,2 |" in md
    a = cmp.groups[1].stats["finetuned_knn"]
    assert f"{a['mean']:.3f} ± {a['std']:.3f}" in md
    rows = list(csv.DictReader(io.StringIO(render(cmp, "csv"))))
    assert [r["ssl_method"] for r in rows] == ["byol", "simclr"]
    assert float(rows[1]["finetuned_knn_mean"]) == pytest.approx(a["mean"]) and rows[1]["finetuned_knn_n"] == "3"
    data = json.loads(render(cmp, "json"))
    assert data["groups"][1]["metrics"]["finetuned_knn"]["std"] == pytest.approx(a["std"])
    assert sorted(data["groups"][0]["pipeline_runs"]) == ["b-0", "b-1"]
    png = plot(cmp, str(tmp_path / "out" / "cmp.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UftError, match="unknown format 'xml'"):
        render(cmp, "xml")


def test_errors(runs):
    with pytest.raises(UftError, match=r"experiment 'nope' not found .*choose one of .*exp"):
        compare(experiment="nope")
    with pytest.raises(UftError, match=r"experiment 'empty' has no finished pipeline runs"):
        compare(experiment="empty")
    with pytest.raises(UftError, match=r"run 'zzz' not found in experiment 'exp'"):
        compare(["zzz"], "exp")
    with pytest.raises(UftError, match=r"no run has param bogus"):
        compare(experiment="exp", group_by=["bogus"])
    with pytest.raises(UftError, match=r"no metric matches nomatch\*"):
        compare(experiment="exp", metrics=["nomatch*"])


def test_pure_helpers():
    assert aggregate([]) == {"mean": None, "std": None, "n": 0}
    assert aggregate([2.0]) == {"mean": 2.0, "std": None, "n": 1}
    p, m = merge_params_metrics({"mix_op": "cutmix"}, {"x": 1.0},
                                [("ssl_finetune", {"method": "act", "plan": '{"op": "mixup"}'}, {"ssl_loss": 2.0})])
    assert p["mix_op"] == "cutmix" and p["ssl_method"] == "act" and p["ssl_finetune.method"] == "act"
    assert m == {"x": 1.0, "ssl_finetune.ssl_loss": 2.0}
    with pytest.raises(UftError, match="no runs to compare"):
        group_runs([])


def test_comparison_is_logged_to_mlflow_and_not_counted_as_a_pipeline_run(runs):
    from mlflow.tracking import MlflowClient

    from uft.compare import log_comparison

    cmp = compare(experiment="exp")
    rid = log_comparison(cmp, "exp", params={"grid": "ssl_method=simclr,byol", "seeds": "0,1,2"})
    run = MlflowClient().get_run(rid)
    assert run.data.tags["uft.kind"] == "comparison" and run.data.params["grid"] == "ssl_method=simclr,byol"
    assert {f.path for f in MlflowClient().list_artifacts(rid)} == {
        "comparison.md", "comparison.csv", "comparison.json", "comparison.png"}
    text = MlflowClient().download_artifacts(rid, "comparison.md")
    assert open(text).read() == render(cmp, "markdown")
    # the summary run is not a pipeline run: comparing again sees the same groups
    again = compare(experiment="exp")
    assert [len(g.runs) for g in again.groups] == [len(g.runs) for g in cmp.groups]


def test_every_config_field_is_recoverable_from_step_params():
    """Runs submitted to KFP carry only the report's config subset on the parent (`uft run` logs the
    whole config): every other RunConfig field must map from some step's params, or `uft compare`
    / `uft sweep` could not group by it. A new config field fails here until it is mapped."""
    from uft.compare import PLAN_PARAMS, STEP_PARAMS
    from uft.config import RunConfig

    mapped = set(PLAN_PARAMS.values()) | {v for m in STEP_PARAMS.values() for v in m.values()}
    # With pretrained_encoder the pretrain step logs no run; ssl_finetune's encoder_sha names the weights.
    assert set(RunConfig.model_fields) - mapped == {"pretrained_encoder"}


def test_cli_compare(runs, tmp_path):
    from typer.testing import CliRunner

    from uft.cli import app

    res = CliRunner().invoke(app, ["compare", "--experiment", "exp", "--format", "json", "--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [g["group"]["ssl_method"] for g in data["groups"]] == ["byol", "simclr"]
    assert (tmp_path / "p.png").is_file()
    table = CliRunner().invoke(app, ["compare", "a-0", "a-1", "--experiment", "exp", "-m", "finetuned_*"])
    assert table.exit_code == 0 and "group 1" in table.output and "finetuned_knn" in table.output
    bad = CliRunner().invoke(app, ["compare", "--experiment", "nope"])
    assert bad.exit_code == 2 and "not found" in bad.output
