"""RadReg in pretraining as a pipeline parameter: the compiled DAG feeds the three pipeline
parameters to the pretrain task, the component hands them to the step (RadReg active: a different
encoder than without), and the configuration refuses a weight without a target."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def test_compiled_pipeline_wires_pretrain_radreg_parameters(tmp_path):
    import yaml
    from kfp import compiler

    from pipelines.uft_pipeline import uft_pipeline

    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(uft_pipeline, str(out))
    spec = next(d for d in yaml.safe_load_all(out.read_text()) if d and "root" in d)
    roots = spec["root"]["inputDefinitions"]["parameters"]
    assert roots["pretrain_radreg_weight"]["defaultValue"] == 0.0 and roots["pretrain_radreg_target"]["defaultValue"] == ""

    def tasks(dag: dict):  # the pretrain task sits inside the exit handler's sub-DAG
        for name, t in dag.get("tasks", {}).items():
            yield name, t
            comp = spec["components"].get(t["componentRef"]["name"], {})
            yield from tasks(comp.get("dag", {}))

    pre = dict(tasks(spec["root"]["dag"]))["pretrain"]["inputs"]["parameters"]
    wired = {k: v.get("componentInputParameter") for k, v in pre.items()}
    assert {k: wired[k] for k in ("radreg_weight", "radreg_form", "radreg_target_uri")} == {
        "radreg_weight": "pipelinechannel--pretrain_radreg_weight",
        "radreg_form": "pipelinechannel--pretrain_radreg_form",
        "radreg_target_uri": "pipelinechannel--pretrain_radreg_target"}


def test_component_hands_radreg_to_the_step_and_it_is_active(tmp_path, monkeypatch):
    from kfp import dsl

    from components.pretrain import pretrain
    from uft import steps
    from uft.lineage import describe
    from uft.models.artifact import load_encoder

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = str(tmp_path / "store")
    src = steps.ingest("optdigits", store, role="source", image_size=8, channels=1, limit=160, test_fraction=0.2)
    tgt = steps.ingest("optdigits", store, role="target", image_size=8, channels=1, limit=100, test_fraction=0.3, seed=1)

    def run(name: str, **radreg) -> str:
        model = dsl.Model(name="model", uri=str(Path(tmp_path, "kfp", name)))
        pretrain.python_func(source=dsl.Dataset(name="source", uri="", metadata=describe(src["dataset_uri"])),
                             store_uri=store, encoder="tiny", encoder_width=4, method="simclr", steps=2, batch_size=16,
                             lr=2e-3, seed=0, pretrained_encoder="", checkpoint_every=2, run_id=name, experiment="uft",
                             model=model, **radreg)
        return model.metadata["manifest_uri"]

    plain = run("plain")
    reg = run("reg", radreg_weight=10.0, radreg_form="closed", radreg_target_uri=tgt["dataset_uri"])
    assert reg != plain
    a, b = load_encoder(plain)[0], load_encoder(reg)[0]
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    from uft.errors import UftError

    with pytest.raises(UftError, match="radreg_target_uri"):
        run("missing", radreg_weight=0.1)


@pytest.mark.parametrize("params, fix", [
    ({"pretrain_radreg_weight": 0.1}, "pretrain_radreg_target"),
    ({"pretrain_radreg_weight": 0.1, "pretrain_radreg_target": "s3://b/t/manifest.json", "pretrained_encoder": "s3://e"},
     "drop one"),
    ({"pretrain_radreg_form": "closd"}, "closed or adversarial"),
])
def test_config_refuses_radreg_it_cannot_run(params, fix):
    from pydantic import ValidationError

    from uft.config import RunConfig

    with pytest.raises(ValidationError, match=fix):
        RunConfig(**params)
    ok = RunConfig(pretrain_radreg_weight=0.1, pretrain_radreg_target="s3://b/t/manifest.json")
    assert ok.pretrain_radreg_form == "closed"
