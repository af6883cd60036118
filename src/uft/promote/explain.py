"""Saying why: the gate's explanation table (report section, ``uft promote --explain``), a manual
promotion from the CLI, and the one-line summary ``uft run`` prints."""

from __future__ import annotations

import math
from typing import Any


from uft.errors import UftError
from uft.promote.policy import (CHAMPION, DEFAULT_MODEL, DOMAIN_SHIFT_ACCURACY, Decision, GatePolicy, _has, decide,
                                interval_line)
from uft.promote.registry import _client, apply, stored_signals, version_by_alias


READINGS = {
    "gate_score": "the gate's score: view retrieval × rank fraction (higher = better)",
    "val_probe": "5-shot linear probe within the target val split (only when val labels exist)",
    "source_retention": "k-NN accuracy on held-out source images (source val split; forgetting check)",
    "view_retrieval": "share of augmented target images matched to their own other view",
    "effective_rank": "RankMe: how many feature directions are in use (1 = collapsed)",
    "rank_fraction": "effective rank / feature dimension",
    "alignment": "distance between two views of an image (lower = more invariant)",
    "uniformity": "spread of target features on the sphere (lower = more spread)",
    "snd": "soft neighbourhood density (high also for a collapsed encoder: read with the rank)",
    "neighbourhood_agreement": "overlap of k-NN neighbourhoods with the base encoder (1 = unchanged)",
}
#: signal → (policy field, how its change is read, what the rule does with it)
RULED = {"gate_score": ("min_gate_gain", "relative", "without val labels: the gain's interval must clear it"),
         "val_probe": ("min_probe_gain", "absolute", "with val labels: the gain's interval must clear it"),
         "source_retention": ("retention_tolerance", "absolute", "hold when it drops by more")}


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)) else "–"


def explain_lines(m: dict[str, Any]) -> list[str]:
    """Markdown lines saying why: each signal for candidate, reference and untrained floor, the change,
    the margin and the noise it came from, the decision and its reasons (the promote step's metrics)."""
    cand, ref, floor = m.get("signals") or {}, m.get("champion_signals") or {}, m.get("floor_signals") or {}
    policy = m.get("policy") or {}
    refname = m.get("reference") or "reference"
    head = f"**Decision: {m.get('decision')}**" + (f" — `{m.get('registered_model')}` version {m['version']}"
                                                    if m.get("version") else "")
    where = cand.get("signals_split", "val")
    lines = [head, "", f"Compared with: **{refname}**, on the same held-out images (target {where} split, "
             f"{cand.get('n_views', '?')} images; source val split for retention).", ""]
    header = ["signal", "candidate", refname, "untrained floor", "change", "bar", "rule / reading"]
    # numbers right, text left (the report renders the alignment row)
    lines += ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(header) - 2) + ":---|"]
    for k in READINGS:
        if not any(_has(d, k) for d in (cand, ref, floor)):
            continue
        change, margin, rule = "", "", f"shown only: {READINGS[k]}"
        if k in RULED and _has(cand, k) and _has(ref, k):
            field_, how, rule = RULED[k]
            if how == "relative":
                change = f"{cand[k] / ref[k] - 1:+.1%}" if ref[k] else "–"
                margin = f"+{policy.get(field_, float('nan')):.1%}"
            else:
                change, margin = f"{cand[k] - ref[k]:+.4f}", f"{policy.get(field_, float('nan')):.4f}"
        lines.append("| " + " | ".join([k, _fmt(cand.get(k)), _fmt(ref.get(k)), _fmt(floor.get(k)), change, margin,
                                        rule]) + " |")
    if isinstance(m.get("domain_shift"), (int, float)):
        lines += ["", f"Domain check: a classifier tells the champion's target from this one with accuracy "
                      f"{m['domain_shift']:.2f} (another domain at ≥ {DOMAIN_SHIFT_ACCURACY}; same domain ≈ 0.5)."]
    iv = m.get("interval")
    lines += ["", "Decision interval: " + (interval_line(iv, refname) if iv else
                                           "none — the two encoders were not scored on the same rows (held)")]
    lin = m.get("lineage") or {}
    if lin:
        verdict = (f"cannot tell — {lin['cannot_tell']}" if lin.get("cannot_tell") else
                   f"no scored row was in the training split of either encoder ({lin.get('excluded_target', 0)} "
                   "target val rows left out because one of them trained on it)")
        lines += ["", f"Rows scored: {verdict}."] + [f"- {c}" for c in lin.get("checked", [])]
    lines += ["", f"Noise bands (floor check, retention): {policy.get('noise') or 'not recorded'}", "", "Reasons:"]
    lines += [f"- {r}" for r in m.get("reasons", [])] + [""]
    return lines


def report_section(m: dict[str, Any]) -> list[str]:
    """Markdown lines for the run report from the promote step's metrics."""
    return ["## Promotion gate", ""] + explain_lines(m)


def explain(pipeline_run_id: str, *, experiment: str = "uft") -> list[str]:
    """The explanation (:func:`explain_lines`) of the decision a pipeline run's promote step made."""
    from uft import tracking
    from uft.store import read_manifest

    if not tracking.enabled():
        raise UftError("MLflow tracking is off: set MLFLOW_TRACKING_URI to the registry's tracking server")
    import mlflow

    run = tracking.find_run(tracking.experiment_id(experiment), pipeline_run_id, "promote")
    if run is None or "uft.promote_metrics_uri" not in run.data.tags:
        raise UftError(f"run {pipeline_run_id!r} has no recorded promotion decision in experiment {experiment!r}: "
                       "pass the run id `uft run` printed (and --experiment)")
    try:
        metrics = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/promotion.json")
    except Exception:  # recorded before the decision was logged with the run: the store's copy
        metrics = read_manifest(run.data.tags["uft.promote_metrics_uri"])[0]["metrics"]
    return explain_lines(metrics)


# --- the manual decision (`uft promote RUN`) ------------------------------------------------------

def manual_promote(pipeline_run_id: str, *, registered_model: str = DEFAULT_MODEL, experiment: str = "uft",
                   force: bool = False, policy: GatePolicy = GatePolicy()) -> Decision:
    """Re-decide (or, with ``force``, promote regardless) the version a pipeline run registered.

    Without ``force`` the gate is applied to the signals recorded on the two versions' tags. Those
    were measured on each run's own data, not on the same rows, so they carry no paired outcomes:
    the rule cannot form the gain's interval and holds ("cannot tell"). A decision with an interval
    is the pipeline's promote step, which re-scores the champion on this run's val rows."""
    from uft import tracking

    if not tracking.enabled():
        raise UftError("MLflow tracking is off: set MLFLOW_TRACKING_URI to the registry's tracking server")
    client = _client()
    run = tracking.find_run(tracking.experiment_id(experiment), pipeline_run_id, "promote")
    if run is None or run.data.tags.get("uft.model_version") in (None, "", "None"):
        raise UftError(f"run {pipeline_run_id!r} has no promote step with a registered version in experiment "
                       f"{experiment!r}: pass the run id `uft run` printed (and --experiment)")
    name = run.data.tags.get("uft.registered_model", registered_model)
    version = client.get_model_version(name, run.data.tags["uft.model_version"])
    mine = stored_signals(version)
    champ_v = version_by_alias(name, CHAMPION, client)
    if champ_v is not None and str(champ_v.version) == str(version.version) and not force:
        return Decision(False, [f"unchanged: version {version.version} is already champion"], mine,
                        version=str(version.version))
    champ = stored_signals(champ_v) if champ_v is not None else None
    decision = decide(mine, champ, policy, force=force,
                      reference=f"champion version {champ_v.version}" if champ_v is not None else "champion")
    return apply(name, version.version, decision, client)


def promotion_summary(experiment: str, pipeline_run_id: str) -> str | None:
    """"<decision> — <model> version N: <reasons>" from a finished run's promote step (for `uft run`)."""
    from uft import tracking

    if not tracking.enabled():
        return None
    run = tracking.find_run(tracking.experiment_id(experiment), pipeline_run_id, "promote")
    if run is None or "uft.decision" not in run.data.tags:
        return None
    t = run.data.tags
    version = t.get("uft.model_version")
    where = f" — {t.get('uft.registered_model')} version {version}" if version not in (None, "", "None") else ""
    return f"{t['uft.decision']}{where}: {t.get('uft.reasons', '')}"
