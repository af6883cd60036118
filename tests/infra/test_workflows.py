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
    assert re.search(r'uft trigger --target "\$UFT_TARGET_URI" --host "\$KFP_HOST" --max-attempts "\$UFT_MAX_ATTEMPTS"',
                     script)
    (job,) = wf["jobs"].values()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "KFP_HOST", "KFP_TOKEN"):
        assert job["env"][name] == f"${{{{ secrets.{name} }}}}", f"{name} must come from GitHub secrets"
    # The trigger never talks to MLflow (the cluster keeps MLflow to its namespace): no URI, no keys.
    assert "MLFLOW_TRACKING_URI" not in job["env"]


def test_trigger_can_state_the_kfp_version_and_caps_attempts():
    """The API behind a port-forward or proxy may not report its version (ml-pipeline-ui answers
    apiServerTagName, an unset TAG_NAME is "unknown"): the workflow passes vars.UFT_KFP_VERSION,
    which `uft trigger` reads as --kfp-version. Retries of one content hash stop after
    vars.UFT_MAX_ATTEMPTS (default 3)."""
    (job,) = load("trigger.yml")["jobs"].values()
    assert job["env"]["UFT_KFP_VERSION"] == "${{ vars.UFT_KFP_VERSION }}"
    assert job["env"]["UFT_MAX_ATTEMPTS"] == "${{ vars.UFT_MAX_ATTEMPTS || '3' }}"
    from typer.main import get_command

    from uft.cli import app

    trigger = get_command(app).commands["trigger"]
    opts = {o.name: o for o in trigger.params}
    assert opts["kfp_version"].envvar == "UFT_KFP_VERSION" and opts["max_attempts"].default == 3


def test_images_workflow_builds_both_images_and_reports_digests():
    """Defect 6: nothing published the images. On a version tag (or by hand) both Dockerfiles are
    built and pushed to ghcr.io, and the summary gives each as repo@sha256 for UFT_IMAGE/UFT_GPU_IMAGE."""
    wf = load("images.yml")
    assert wf["on"]["push"]["tags"] == ["v*"] and "workflow_dispatch" in wf["on"]
    assert wf["permissions"] == {"contents": "read", "packages": "write"}
    (job,) = wf["jobs"].values()
    assert job["timeout-minutes"] <= 60
    matrix = {m["flavour"]: m["variable"] for m in job["strategy"]["matrix"]["include"]}
    assert matrix == {"cpu": "UFT_IMAGE", "cuda": "UFT_GPU_IMAGE"}
    root = WORKFLOWS.parents[1]
    for flavour in matrix:
        assert (root / f"docker/Dockerfile.{flavour}").is_file()
    for step in job["steps"]:
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), f"pin {step['uses']} to a major tag"
    build = next(s for s in job["steps"] if s.get("uses", "").startswith("docker/build-push-action@"))
    assert build["with"]["push"] is True and build["with"]["file"] == "docker/Dockerfile.${{ matrix.flavour }}"
    login = next(s for s in job["steps"] if s.get("uses", "").startswith("docker/login-action@"))
    assert login["with"]["registry"] == "ghcr.io" and login["with"]["password"] == "${{ secrets.GITHUB_TOKEN }}"
    digest = next(s for s in job["steps"] if s.get("name") == "Digest")
    assert digest["env"]["REF"] == "${{ steps.repo.outputs.name }}@${{ steps.build.outputs.digest }}"
    assert "GITHUB_STEP_SUMMARY" in digest["run"] and "${{ matrix.variable }}=$REF" in digest["run"]


def _check_configuration(tmp_path, **env) -> tuple[int, str, str]:
    """Run the trigger workflow's "Check configuration" script with bash, as the runner would."""
    import os
    import subprocess

    wf = load("trigger.yml")
    script = next(s["run"] for s in steps(wf) if s.get("name") == "Check configuration")
    out = tmp_path / "github_output"
    out.write_text("")
    base = {"KFP_HOST": "", "UFT_TARGET_URI": "", "UFT_IMAGE": "", "UFT_GPU_IMAGE": ""}
    proc = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"], "GITHUB_OUTPUT": str(out), **base, **env})
    return proc.returncode, out.read_text(), proc.stdout + proc.stderr


def test_trigger_runs_only_digest_pinned_images(tmp_path):
    """Defect 6: the trigger ran with the compiled-in default tags. It now compiles with
    vars.UFT_IMAGE/UFT_GPU_IMAGE and refuses anything but image@sha256."""
    wf = load("trigger.yml")
    (job,) = wf["jobs"].values()
    assert job["env"]["UFT_IMAGE"] == "${{ vars.UFT_IMAGE }}" and job["env"]["UFT_GPU_IMAGE"] == "${{ vars.UFT_GPU_IMAGE }}"
    assert job["env"]["KFP_TOKEN"] == "${{ secrets.KFP_TOKEN }}" and job["env"]["UFT_BUCKET"] == "${{ vars.UFT_BUCKET }}"
    pinned = "ghcr.io/o/r@sha256:" + "0" * 64
    ready = dict(KFP_HOST="http://kfp", UFT_TARGET_URI="s3://b/t")
    assert _check_configuration(tmp_path)[:2] == (0, "ok=false\n")  # not configured: skip quietly
    assert _check_configuration(tmp_path, **ready, UFT_IMAGE=pinned, UFT_GPU_IMAGE=pinned)[:2] == (0, "ok=true\n")
    for cpu, gpu in [("ghcr.io/o/r:v1-cpu", pinned), (pinned, "ghcr.io/o/r:latest"), ("", "")]:
        rc, out, log = _check_configuration(tmp_path, **ready, UFT_IMAGE=cpu, UFT_GPU_IMAGE=gpu)
        assert rc == 1 and "ok=true" not in out and "@sha256" in log
