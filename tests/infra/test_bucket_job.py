"""The bucket Job of infra/components/bucket re-applies cleanly. A Job's pod template is
immutable (Kubernetes rejects ``kubectl apply`` of a changed one: "field is immutable") and the Job
stays for ``ttlSecondsAfterFinished`` (a day), so a changed Job has to be a new object: its
name carries a hash of the script and the Job manifest (kustomize configMapGenerator + the
``nameReference`` in name-from-script.yaml). Checked by rendering a copy of infra/ with
``kubectl kustomize`` before and after each kind of change, and validating the result."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.infra.test_manifests import KUBECTL, ROOT, render_dir

pytestmark = pytest.mark.skipif(KUBECTL is None and __import__("os").environ.get("CI", "").lower() != "true",
                                reason="kubectl is not installed: the manifests are rendered with it (CI=true never skips)")
OVERLAYS = ("gpu", "standalone-kfp")


def _jobs(infra: Path, overlay: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in render_dir(infra / "overlays" / overlay) if d["kind"] == "Job"}


@pytest.fixture
def infra(tmp_path) -> Path:
    shutil.copytree(ROOT / "infra", tmp_path / "infra")
    return tmp_path / "infra"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_changed_job_is_a_new_job_and_an_unchanged_one_keeps_its_name(infra, overlay):
    comp = infra / "components" / "bucket"
    (before,) = _jobs(infra, overlay).items()
    assert before[0].startswith("uft-bucket-") and before[0] != "uft-bucket"
    script = (comp / "create-bucket.py").read_text()
    assert before[1]["spec"]["template"]["spec"]["containers"][0]["args"] == [script]  # inline, verbatim
    assert _jobs(infra, overlay).keys() == {before[0]}  # rendering is deterministic: re-apply = unchanged
    names = {before[0]}
    for path, edit in (("create-bucket.py", lambda t: t + "# changed\n"),
                       ("bucket-job.yaml", lambda t: t.replace("backoffLimit: 6", "backoffLimit: 5"))):
        p = comp / path
        p.write_text(edit(p.read_text()))
        (name,) = _jobs(infra, overlay)
        assert name not in names, f"a change to {path} kept the Job's name: kubectl apply would hit an immutable template"
        names.add(name)


def test_the_rendered_job_is_valid_kubernetes(infra):
    import kubernetes_validate

    from tests.infra.test_manifests import K8S_VERSION

    for overlay in OVERLAYS:
        for d in render_dir(infra / "overlays" / overlay):
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "uft-bucket":
                kubernetes_validate.validate(d, K8S_VERSION, strict=True)
