"""The GitHub workflows parse and do what docs/deploy.md promises (no GitHub needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

WORKFLOWS = Path(__file__).resolve().parents[2] / ".github" / "workflows"


def load(name: str) -> dict:
    wf = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the bare key `on` as True.
    wf["on"] = wf.pop(True, wf.get("on"))
    return wf


def steps(wf: dict) -> list[dict]:
    return [s for job in wf["jobs"].values() for s in job["steps"]]


def runs(wf: dict) -> str:
    return "\n".join(s.get("run", "") for s in steps(wf))


@pytest.mark.parametrize("name", ["ci.yml", "trigger.yml"])
def test_workflow_is_well_formed(name):
    wf = load(name)
    assert wf["on"] and wf["jobs"]
    assert wf["permissions"] == {"contents": "read"}
    for job in wf["jobs"].values():
        assert job["timeout-minutes"] <= 60
    for step in steps(wf):
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), f"pin {step['uses']} to a major tag"
    setup = [s for s in steps(wf) if s.get("uses", "").startswith("actions/setup-python@")]
    assert setup and all(s["with"]["python-version"] == "3.11" for s in setup)
    # `make install` pins torch==2.13.0; without the CPU index PyPI serves the multi-GB CUDA build.
    for job in wf["jobs"].values():
        assert job["env"]["PIP_EXTRA_INDEX_URL"].endswith("/whl/cpu")


def test_ci_runs_make_test_on_push_and_pull_requests():
    wf = load("ci.yml")
    assert "push" in wf["on"] and "pull_request" in wf["on"]
    assert re.search(r"^make test$", runs(wf), re.M)
    assert any(s.get("uses", "").startswith("actions/checkout@") for s in steps(wf))


def test_trigger_is_serialised_and_uses_secrets():
    wf = load("trigger.yml")
    on = wf["on"]
    assert on["push"]["paths"] == ["data/target/**"]
    assert [c["cron"] for c in on["schedule"]] == ["*/30 * * * *"]
    assert "workflow_dispatch" in on
    assert wf["concurrency"]["group"] and wf["concurrency"]["cancel-in-progress"] is False
    script = runs(wf)
    assert "make install" in script
    assert re.search(r'uft trigger --target "\$UFT_TARGET_URI" --host "\$KFP_HOST"', script)
    (job,) = wf["jobs"].values()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI", "KFP_HOST"):
        assert job["env"][name] == f"${{{{ secrets.{name} }}}}", f"{name} must come from GitHub secrets"
