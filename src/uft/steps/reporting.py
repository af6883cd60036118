"""The report step: every step's metrics into a markdown + HTML report with plots, logged to the
parent MLflow run."""

from __future__ import annotations

from typing import Any

from uft import tracking
from uft.step_cache import cached
from uft.steps.common import step_device
from uft.store import content_key, manifest_sha, publish, read_manifest, read_verified, step_store


# torch and numpy are imported inside the functions that compute: a step whose outputs are cached
# then never pays torch's import (seconds per process).



def report(metrics_uris: list[str], store_uri: str, *, config: dict[str, Any], encoder_uris: dict[str, str] | None = None,
           dataset_uris: dict[str, str] | None = None, run_id: str = "local", experiment: str = "uft",
           out_dir: str | None = None) -> dict[str, Any]:
    """Collect every step's metrics into a markdown + HTML report with plots; log it to MLflow."""
    store = step_store(store_uri)
    # Keyed on everything the report shows, by content, and on the parent MLflow run it logs to: a
    # rerun with the same of each (every step a cache hit) reads the published report instead of
    # redrawing and re-logging it; a wiped MLflow db means a new parent run, which gets it again.
    inputs = {"metrics": [manifest_sha(u) for u in metrics_uris], "config": config,
              "encoders": {n: manifest_sha(u) for n, u in sorted((encoder_uris or {}).items())},
              "datasets": {r: manifest_sha(u) for r, u in sorted((dataset_uris or {}).items()) if u},
              "run_id": run_id, "parent": tracking.parent_run_id(experiment, run_id) if tracking.enabled() else ""}
    drawn: dict[str, bytes] = {}

    def compute(_key: str) -> dict[str, Any]:
        from uft.report import build_report

        collected = []
        for uri in metrics_uris:
            manifest, _, _ = read_manifest(uri)
            collected.append({"step": manifest["step"], "metrics": manifest["metrics"], "uri": uri})
        with tracking.step_run(experiment, run_id, "report") as run:
            curves, shown = {}, dict(config)
            for name, uri in (encoder_uris or {}).items():
                manifest = read_manifest(uri)[0]
                info = manifest.get("info", {})
                if name == "finetune":  # the verdict's seed-noise table applies to one encoder only
                    shown.setdefault("encoder", manifest.get("spec", {}).get("name", ""))
                if info.get("losses"):
                    curves[name] = [tuple(p) for p in info["losses"]]
                if info.get("ssl_head"):  # continued / fresh projector of the finetune
                    shown["ssl_head_note"] = f"SSL head of the {name}: {info['ssl_head']}."
            datasets = {role: read_manifest(uri)[0] for role, uri in (dataset_uris or {}).items() if uri}
            projections = _projections(encoder_uris or {}, (dataset_uris or {}).get("target", ""))
            files, summary = build_report(collected, shown, curves, datasets, projections)
            drawn.update(files)
            key = content_key("report", run_id, sorted(metrics_uris))
            uri = publish(store, f"reports/{run_id}/{key}", files, {"kind": "report", "summary": summary})
            if run is not None:
                _log_report(run, files, summary, collected, config, experiment, run_id)
            tracking.log_outputs({"report_uri": uri})
        return {"report_uri": uri, "summary": summary}

    out = cached(store, "report", inputs, compute)
    files = drawn or _published_files(out["report_uri"], None if out_dir else ("report.md", "report.html"))
    if out_dir:
        from pathlib import Path

        for name, data in files.items():
            (Path(out_dir) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / name).write_bytes(data)
    return {**out, "markdown": files["report.md"].decode(), "html": files["report.html"].decode()}


def _log_report(run, files: dict[str, bytes], summary: dict[str, Any], collected: list[dict[str, Any]],
                config: dict[str, Any], experiment: str, run_id: str) -> None:
    """The report's files to the report run *and* to the parent run (the one `uft run` links and a
    person opens), the summary metrics and the config to the parent, and the parent's description:
    the decision with a link to the registered model version, the headline table, report links."""
    import tempfile
    from pathlib import Path

    from uft.report import mlflow_markdown, run_description

    parent_id = tracking.log_parent_params(experiment, run_id, config)  # for `uft compare`
    client = tracking._client()
    md = files["report.md"].decode()
    for target in (run.info.run_id, parent_id):
        if target is None:
            continue
        with tempfile.TemporaryDirectory() as d:
            for name, data in files.items():
                (Path(d) / name).write_bytes(data)
            # the markdown's plots from this run's artifacts: MLflow's viewer draws no data: images
            (Path(d) / "report.md").write_text(mlflow_markdown(md, files, target))
            client.log_artifacts(target, d)
    if parent_id is None:
        return
    for k, v in summary.items():
        if isinstance(v, (int, float)):
            client.log_metric(parent_id, k, float(v))
    exp_id = run.info.experiment_id
    client.set_tag(parent_id, "mlflow.note.content", run_description(collected, exp_id, parent_id))
    promotion = next((c["metrics"] for c in collected if c["step"] == "promote"), {})
    if promotion.get("version") not in (None, "", "None"):  # the registry link as tags too (searchable)
        client.set_tag(parent_id, "uft.registered_model", str(promotion.get("registered_model")))
        client.set_tag(parent_id, "uft.model_version", str(promotion["version"]))


def _published_files(uri: str, names: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """The files (all, or ``names``) of the published artifact whose manifest is ``uri``, verified."""
    manifest, where, prefix = read_manifest(uri)
    return {n: read_verified(where, prefix, manifest, n, uri) for n in (names or manifest["files"])}


def _projections(encoder_uris: dict[str, str], target_uri: str, max_points: int = 2000) -> dict[str, tuple]:
    """PCA of each encoder's features on (up to ``max_points``) labelled target test images."""
    import torch
    from sklearn.decomposition import PCA

    from uft.data.stream import StreamSource
    from uft.evaluate.features import extract_features
    from uft.models.artifact import load_encoder

    if not target_uri or not encoder_uris:
        return {}
    # The first max_points labelled test rows (a bounded sample), read shard by shard until there are enough.
    images, labels, have = [], [], 0
    for batch in StreamSource(target_uri, split="test", window=1).open(1024, shuffle=False, epochs=1, drop_last=False):
        keep = batch.labels >= 0
        images.append(batch.images[keep][: max_points - have].clone())
        labels.append(batch.labels[keep][: max_points - have])
        have += len(labels[-1])
        if have >= max_points:
            break
    if have < 3:
        return {}
    x, y = torch.cat(images), torch.cat(labels).numpy()
    out = {}
    for name, uri in encoder_uris.items():
        feats = extract_features(load_encoder(uri)[0], x, device=step_device()).numpy()
        out[name] = (PCA(n_components=2, random_state=0).fit_transform(feats), y)
    return out
