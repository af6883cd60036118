"""`uft compare`: pipeline runs from MLflow side by side, grouped by method, mean ± std over seeds.

A *run* here is one pipeline run: its MLflow parent run (tag ``uft.step=pipeline``) plus the step
runs that share its ``uft.pipeline_run_id`` tag. Its params are the parent's params, completed from
the step runs under the pipeline's config names (``ssl_finetune.method`` → ``ssl_method``,
``ssl_finetune.plan`` → ``mix_op`` …), and every step param is also available as ``step.param``.
Its metrics are the parent's (the report's summary) and every step metric as ``step.metric``.

Runs are grouped by the values of the group keys (default: the method-defining config params in
:data:`DEFAULT_GROUP_KEYS` that any run has); each group reports, per metric, the mean, the sample
standard deviation (ddof=1; ``None`` for a single run) and how many runs had it, and the seeds.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import fnmatch
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from uft import tracking
from uft.errors import UftError

DEFAULT_GROUP_KEYS = ("ssl_method", "replay_rule", "replay_size", "replay_ratio", "mix_op", "mix_pairing",
                      "radreg_weight", "from_scratch")
SEED_KEY = "seed"
FORMATS = ("table", "markdown", "csv", "json")

# step → {step param: config name}; used when the parent run does not carry the config itself.
STEP_PARAMS = {
    "ssl_finetune": {"method": "ssl_method", "replay_ratio": "replay_ratio", "radreg_weight": "radreg_weight",
                     "steps": "finetune_steps", "lr": "lr", "batch_size": "batch_size", "seed": "seed",
                     "from_scratch": "from_scratch", "checkpoint_every": "checkpoint_every"},
    "pretrain": {"method": "pretrain_method", "encoder": "encoder", "encoder_width": "encoder_width",
                 "steps": "pretrain_steps", "seed": "seed", "radreg_weight": "pretrain_radreg_weight",
                 "radreg_form": "pretrain_radreg_form", "radreg_target_sha": "pretrain_radreg_target",
                 "encoder_weights": "encoder_weights"},  # the pretrain run that imports the weights logs it
    "subsample_source": {"rule": "replay_rule", "size": "replay_size", "seed": "seed"},
    "ingest_source": {"spec": "source", "limit": "source_limit", "test_fraction": "source_test_fraction",
                      "val_fraction": "source_val_fraction", "image_size": "image_size", "channels": "channels", "framing": "framing"},
    "ingest_target": {"spec": "target", "limit": "target_limit", "test_fraction": "target_test_fraction",
                      "val_fraction": "target_val_fraction"},
    "holistic_base": {"methods": "holistic_methods", "seen": "holistic_seen", "steps": "holistic_steps",
                 "source_steps": "holistic_source_steps"},
    "linear_eval_base": {"shots": "label_shots", "draws": "probe_draws"},
    "knn_eval_base": {"k": "knn_k"},
    "promote": {"registered_model": "registered_model", "margin": "promote_margin",
                "retention_tolerance": "retention_tolerance"},
}
PLAN_PARAMS = {"op": "mix_op", "alpha": "mix_alpha", "fraction": "mix_fraction", "pairing": "mix_pairing"}


@dataclass
class RunRecord:
    """One pipeline run: MLflow parent id, its pipeline run id, params and metrics (see module doc)."""

    run_id: str
    pipeline_run_id: str
    experiment_id: str
    status: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Group:
    key: dict[str, str | None]  # group-key values (None = the runs lack that param)
    runs: list[RunRecord]
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric → {mean, std, n}
    params: dict[str, str | None] = field(default_factory=dict)  # extra params shown (constant or "a|b")

    @property
    def seeds(self) -> list[str]:
        return sorted({r.params.get(SEED_KEY, "?") for r in self.runs}, key=_sort_key)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.key.items() if v is not None) or "all runs"


@dataclass
class Comparison:
    group_keys: list[str]
    metrics: list[str]
    show_params: list[str]
    groups: list[Group]


# --- fetching -------------------------------------------------------------------------------------

@contextlib.contextmanager
def tracking_env() -> Iterator[None]:
    """MLflow as `uft run` left it: ``MLFLOW_TRACKING_URI`` if set, else the local state's sqlite file."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        yield
        return
    from uft.orchestrate.local import local_services, state_dir

    db = state_dir() / "mlflow.db"
    if not db.is_file():
        raise UftError(f"no MLflow runs found: {db} does not exist; run `uft run` first or set MLFLOW_TRACKING_URI")
    with local_services(state_dir(), start_s3=False):
        yield


def _client():
    if not tracking.enabled():
        raise UftError("MLFLOW_TRACKING_URI is not set: point it at the MLflow server (or sqlite file) that holds the runs")
    return tracking._client()


def _call(fn, what: str, *, missing_ok: bool = False):
    """MLflow calls → one-line errors (unreachable server, bad query); ``missing_ok``: None if absent."""
    from mlflow.exceptions import MlflowException

    try:
        return fn()
    except MlflowException as e:
        if missing_ok and e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        msg = str(e.message).splitlines()[0] if getattr(e, "message", None) else type(e).__name__
        raise UftError(f"MLflow could not {what}: {msg}") from None
    except Exception as e:
        raise UftError(f"MLflow at {os.environ.get('MLFLOW_TRACKING_URI')} failed to {what} ({type(e).__name__}): "
                       "check that it is running and MLFLOW_TRACKING_URI is right") from None


def _search(client, exp_ids: list[str], filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = _call(lambda: client.search_runs(exp_ids, filter_string=filter_string, max_results=1000,
                                                page_token=token), "search runs")
        runs += list(page)
        token = getattr(page, "token", None)
        if not token:
            return runs


def fetch_runs(run_ids: Sequence[str] = (), experiment: str | None = None, *,
               include_unfinished: bool = False) -> list[RunRecord]:
    """Pipeline runs by id (MLflow run id of a parent or step run, or a pipeline run id such as
    ``cfg-…``), or every pipeline run of ``experiment``. With ``experiment`` alone, runs that are
    not FINISHED are left out unless ``include_unfinished``; runs named by id are always kept."""
    client = _client()
    exp_ids: list[str] = []
    if experiment:
        exp = _call(lambda: client.get_experiment_by_name(experiment), "read experiments")
        if exp is None:
            names = [e.name for e in _call(lambda: client.search_experiments(max_results=50), "list experiments")]
            raise UftError(f"MLflow experiment {experiment!r} not found at {os.environ.get('MLFLOW_TRACKING_URI')}: "
                           f"choose one of {', '.join(sorted(names)) or '(none: run `uft run` first)'}")
        exp_ids = [exp.experiment_id]

    parents = []
    if run_ids:
        all_exps = exp_ids or [e.experiment_id for e in _call(lambda: client.search_experiments(max_results=1000), "list experiments")]
        for rid in run_ids:
            run = _call(lambda: client.get_run(rid), f"read run {rid}", missing_ok=True)
            if run is None or (exp_ids and run.info.experiment_id not in exp_ids):
                found = _search(client, all_exps, f"tags.`{tracking.TAG_RUN}` = '{_q(rid)}' and tags.`{tracking.TAG_STEP}` = '{tracking.PARENT}'")
                if not found:
                    where = f"experiment {experiment!r}" if experiment else "any experiment"
                    raise UftError(f"run {rid!r} not found in {where}: pass an MLflow run id or a pipeline run id "
                                   "(see `uft compare --experiment NAME`)")
                run = found[0]
            step = run.data.tags.get(tracking.TAG_STEP)
            if step and step != tracking.PARENT:  # a step run: compare its pipeline run
                found = _search(client, [run.info.experiment_id],
                                f"tags.`{tracking.TAG_RUN}` = '{_q(run.data.tags[tracking.TAG_RUN])}' and tags.`{tracking.TAG_STEP}` = '{tracking.PARENT}'")
                run = found[0] if found else run
            parents.append(run)
        parents = list({r.info.run_id: r for r in parents}.values())  # the same run named twice counts once
    else:
        if not exp_ids:
            raise UftError("nothing to compare: pass run ids or --experiment NAME")
        parents = _search(client, exp_ids, f"tags.`{tracking.TAG_STEP}` = '{tracking.PARENT}'")
        if not include_unfinished:
            parents = [r for r in parents if r.info.status == "FINISHED"]
        if not parents:
            raise UftError(f"experiment {experiment!r} has no finished pipeline runs: run `uft run` first "
                           "(or pass --all to include unfinished ones)")

    # One query per experiment for all step runs, grouped by pipeline run id.
    children: dict[tuple[str, str], list] = {}
    for eid in sorted({p.info.experiment_id for p in parents}):
        for r in _search(client, [eid], f"tags.`{tracking.TAG_STEP}` != '{tracking.PARENT}'"):
            key = r.data.tags.get(tracking.TAG_RUN)
            if key:
                children.setdefault((eid, key), []).append(r)
    out = []
    for p in parents:
        prid = p.data.tags.get(tracking.TAG_RUN, p.info.run_name or p.info.run_id)
        kids = children.get((p.info.experiment_id, prid), []) if tracking.TAG_RUN in p.data.tags else []
        out.append(RunRecord(p.info.run_id, prid, p.info.experiment_id, p.info.status,
                             *merge_params_metrics(p.data.params, p.data.metrics,
                                                   [(c.data.tags.get(tracking.TAG_STEP, "?"), c.data.params, c.data.metrics)
                                                    for c in kids])))
    return out


def _q(s: str) -> str:
    return s.replace("'", "\\'")


def merge_params_metrics(params: dict[str, str], metrics: dict[str, float],
                         steps: Iterable[tuple[str, dict[str, str], dict[str, float]]]) -> tuple[dict[str, str], dict[str, float]]:
    """Parent params/metrics + step runs ``(step, params, metrics)`` → one flat view (module doc)."""
    p, m = dict(params), dict(metrics)
    derived: dict[str, str] = {}
    for step, sp, sm in sorted(steps, key=lambda t: t[0]):
        p.update({f"{step}.{k}": v for k, v in sp.items()})
        m.update({f"{step}.{k}": v for k, v in sm.items()})
        for k, name in STEP_PARAMS.get(step, {}).items():
            if k in sp:
                derived.setdefault(name, sp[k])
        if step == "ssl_finetune" and "plan" in sp:
            plan = _literal(sp["plan"])
            if isinstance(plan, dict):
                for k, name in PLAN_PARAMS.items():
                    if k in plan:
                        derived.setdefault(name, str(plan[k]))
    for k, v in derived.items():
        p.setdefault(k, v)  # the parent's own value wins
    return p, m


def _literal(s: str) -> Any:
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(s)
        except (ValueError, SyntaxError, TypeError):
            continue
    return None


# --- grouping -------------------------------------------------------------------------------------

def select_metrics(runs: Sequence[RunRecord], patterns: Sequence[str] = ()) -> list[str]:
    """Metric names to show: those matching any glob in ``patterns``; by default every parent
    metric except ``*_std`` (or, when no run has parent metrics, every step metric)."""
    names = sorted({k for r in runs for k in r.metrics})
    if patterns:
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
        if not chosen:
            raise UftError(f"no metric matches {', '.join(patterns)}: choose from {', '.join(names[:30]) or '(none logged)'}")
        return chosen
    top = [n for n in names if "." not in n and not n.endswith("_std")]
    return top or [n for n in names if not n.endswith("_std")]


def group_runs(runs: Sequence[RunRecord], group_by: Sequence[str] | None = None, metrics: Sequence[str] = (),
               show_params: Sequence[str] = ()) -> Comparison:
    """Group runs by the values of ``group_by`` and aggregate ``metrics`` (module doc)."""
    if not runs:
        raise UftError("no runs to compare: pass run ids or an experiment with pipeline runs")
    have = {k for r in runs for k in r.params}
    if group_by is None:
        keys = [k for k in DEFAULT_GROUP_KEYS if k in have]
    else:
        keys = list(group_by)
        missing = [k for k in keys if k not in have]
        if missing:
            raise UftError(f"no run has param {', '.join(missing)}: group by some of {', '.join(sorted(have)[:40])}")
    metric_names = list(metrics) if metrics else select_metrics(runs)
    buckets: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        buckets.setdefault(tuple(r.params.get(k) for k in keys), []).append(r)
    groups = []
    for values in sorted(buckets, key=lambda t: tuple(_sort_key(v) for v in t)):
        members = sorted(buckets[values], key=lambda r: (_sort_key(r.params.get(SEED_KEY)), r.pipeline_run_id))
        g = Group(dict(zip(keys, values)), members)
        for name in metric_names:
            vals = [r.metrics[name] for r in members if name in r.metrics and _finite(r.metrics[name])]
            g.stats[name] = aggregate(vals)
        for p in show_params:
            seen = sorted({r.params.get(p) for r in members if r.params.get(p) is not None}, key=_sort_key)
            g.params[p] = "|".join(seen) if seen else None
        groups.append(g)
    return Comparison(keys, metric_names, list(show_params), groups)


def aggregate(values: Sequence[float]) -> dict[str, Any]:
    """→ {mean, std (sample, ddof=1; None below 2 values), n}; mean None when there are none."""
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _sort_key(v: Any) -> tuple:
    """Numbers before strings, numbers numerically; None last."""
    if v is None:
        return (2, 0.0, "")
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


# --- rendering ------------------------------------------------------------------------------------

def fmt_value(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:.3g}"


def cell(stats: dict[str, Any], total: int) -> str:
    """``mean ± std`` (just the mean for one run), with ``(n=k)`` when some runs lack the metric."""
    if stats["mean"] is None:
        return "–"
    s = fmt_value(stats["mean"]) + (f" ± {fmt_value(stats['std'])}" if stats["std"] is not None else "")
    return s + (f" (n={stats['n']})" if stats["n"] != total else "")


def table_rows(cmp: Comparison) -> tuple[list[str], list[list[str]]]:
    """Groups as columns, params then metrics as rows: the side-by-side view (header, rows)."""
    header = ["", *[f"group {i + 1}" for i in range(len(cmp.groups))]]
    rows = [[k, *[str(g.key[k]) if g.key[k] is not None else "–" for g in cmp.groups]] for k in cmp.group_keys]
    rows += [[p, *[g.params.get(p) or "–" for g in cmp.groups]] for p in cmp.show_params]
    rows.append(["runs", *[str(len(g.runs)) for g in cmp.groups]])
    rows.append(["seeds", *[",".join(g.seeds) for g in cmp.groups]])
    rows += [[m, *[cell(g.stats[m], len(g.runs)) for g in cmp.groups]] for m in cmp.metrics]
    return header, rows


def to_markdown(cmp: Comparison) -> str:
    header, rows = table_rows(cmp)
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_records(cmp: Comparison) -> list[dict[str, Any]]:
    """One JSON-ready dict per group."""
    return [{"group": g.key, "params": g.params, "runs": [r.run_id for r in g.runs],
             "pipeline_runs": [r.pipeline_run_id for r in g.runs], "seeds": g.seeds,
             "metrics": {m: g.stats[m] for m in cmp.metrics}} for g in cmp.groups]


def to_json(cmp: Comparison) -> str:
    return json.dumps({"group_keys": cmp.group_keys, "metrics": cmp.metrics, "groups": to_records(cmp)}, indent=2) + "\n"


def to_csv(cmp: Comparison) -> str:
    """One row per group: group keys, shown params, runs, seeds, then ``<metric>_mean/_std/_n``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*cmp.group_keys, *cmp.show_params, "runs", "seeds",
                *[f"{m}_{s}" for m in cmp.metrics for s in ("mean", "std", "n")]])
    for g in cmp.groups:
        w.writerow([*("" if g.key[k] is None else g.key[k] for k in cmp.group_keys),
                    *(g.params.get(p) or "" for p in cmp.show_params), len(g.runs), " ".join(g.seeds),
                    *[("" if g.stats[m][s] is None else g.stats[m][s]) for m in cmp.metrics for s in ("mean", "std", "n")]])
    return buf.getvalue()


def render(cmp: Comparison, fmt: str) -> str:
    if fmt == "markdown":
        return to_markdown(cmp)
    if fmt == "csv":
        return to_csv(cmp)
    if fmt == "json":
        return to_json(cmp)
    raise UftError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


def plot(cmp: Comparison, path: str, *, max_metrics: int = 12) -> str:
    """Bar chart per metric (groups side by side, std as error bars) → PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in cmp.metrics if any(g.stats[m]["mean"] is not None for g in cmp.groups)][:max_metrics]
    if not metrics:
        raise UftError(f"nothing to plot to {path}: no group has a value for the chosen metrics")
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows + 0.6), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, m in zip(axes.flat, metrics):
        means = [g.stats[m]["mean"] if g.stats[m]["mean"] is not None else math.nan for g in cmp.groups]
        errs = [g.stats[m]["std"] or 0.0 for g in cmp.groups]
        ax.bar(range(len(cmp.groups)), means, yerr=errs, capsize=3,
               color=[colors[i % len(colors)] for i in range(len(cmp.groups))])
        ax.set_title(m, fontsize=9)
        ax.set_xticks(range(len(cmp.groups)), [str(i + 1) for i in range(len(cmp.groups))], fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    legend = "   ".join(f"{i + 1}: {g.label} (n={len(g.runs)})" for i, g in enumerate(cmp.groups))
    fig.suptitle("mean ± std over runs per group", fontsize=10)
    fig.text(0.01, 0.005, legend, fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    from pathlib import Path

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return str(out)


def compare(run_ids: Sequence[str] = (), experiment: str | None = None, *, group_by: Sequence[str] | None = None,
            metrics: Sequence[str] = (), show_params: Sequence[str] = (), include_unfinished: bool = False) -> Comparison:
    """Fetch, group and aggregate: the whole of `uft compare` except output."""
    runs = fetch_runs(run_ids, experiment, include_unfinished=include_unfinished)
    names = select_metrics(runs, metrics)
    return group_runs(runs, group_by, names, show_params)


def log_comparison(cmp: Comparison, experiment: str, *, run_name: str = "uft-sweep-summary",
                   params: dict[str, Any] | None = None) -> str:
    """Log a comparison as one MLflow run in ``experiment``: the table as markdown, csv and json,
    the bar chart, and ``params`` (e.g. the sweep's grid). Tagged ``uft.kind=comparison`` and not
    ``uft.step=pipeline``, so later comparisons do not count it as a pipeline run. → run id."""
    import tempfile
    from pathlib import Path

    import mlflow

    with mlflow.start_run(experiment_id=tracking.experiment_id(experiment), run_name=run_name) as run:
        mlflow.set_tags({"uft.kind": "comparison", "uft.group_keys": ",".join(cmp.group_keys)})
        if params:
            mlflow.log_params({k: tracking._param(v) for k, v in params.items()})
        for fmt, ext in (("markdown", "md"), ("csv", "csv"), ("json", "json")):
            mlflow.log_text(render(cmp, fmt), f"comparison.{ext}")
        with tempfile.TemporaryDirectory() as d:
            mlflow.log_artifact(plot(cmp, str(Path(d) / "comparison.png")))
        return run.info.run_id
