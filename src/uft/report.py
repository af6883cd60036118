"""The run report: a markdown + HTML summary with plots, built from the steps' metrics."""

from __future__ import annotations

import base64
import io
import re
from typing import Any, Callable, Sequence

import numpy as np

from uft.errors import UftError

PALETTE = {"base": "#8c8c8c", "finetuned": "#1f77b4"}


def _pyplot():
    """matplotlib's pyplot on the Agg backend, imported on first plot: `uft run` reads this module
    for :func:`baseline_hint` and should not pay a second of matplotlib for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, dpi: int = 110, colors: int = 64) -> bytes:
    """The figure as a palette PNG: plots use few colours, and the report embeds every plot in its
    markdown (MLflow renders a markdown artifact only below 100 KB, images only as data: URIs)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    buf.seek(0)
    small = io.BytesIO()
    Image.open(buf).convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(small, "PNG", optimize=True)
    return small.getvalue()


def _by_tag(collected: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{"base": {...}, "finetuned": {...}} merged from linear_* and knn_* steps."""
    out: dict[str, dict[str, float]] = {}
    for item in collected:
        step = item["step"]
        for prefix in ("linear_", "knn_"):
            if step.startswith(prefix):
                out.setdefault(step[len(prefix):], {}).update(item["metrics"])
    return out


def accuracy_table(tags: dict[str, dict[str, float]]) -> tuple[list[str], list[list[str]]]:
    metrics = sorted({k for m in tags.values() for k in m if not k.endswith("_std")}, key=_metric_order)
    header = ["metric", *tags]
    rows = []
    for k in metrics:
        row = [k]
        for t in tags:
            v, sd = tags[t].get(k), tags[t].get(f"{k}_std")
            row.append("–" if v is None else f"{v:.3f}" + (f" ± {sd:.3f}" if sd is not None else ""))
        rows.append(row)
    return header, rows


def _metric_order(k: str) -> tuple[int, int, str]:
    if k.startswith("linear_") and k.endswith("shot"):
        return (0, int(k[len("linear_"):-len("shot")]), k)
    return (1, 0, k)


def _metric_label(k: str) -> str:
    """``linear_5shot`` → "linear 5-shot"; source_knn is on the *source* test split (retention)."""
    fixed = {"knn": "k-NN", "source_knn": "source k-NN\n(retention)", "linear_full": "linear, all labels"}
    if k in fixed:
        return fixed[k]
    if k.startswith("linear_") and k.endswith("shot"):
        return f"linear {k[len('linear_'):-len('shot')]}-shot"
    return k.replace("_", " ")


def _accuracy_plot(tags: dict[str, dict[str, float]]) -> bytes:
    metrics = sorted({k for m in tags.values() for k in m if not k.endswith("_std")}, key=_metric_order)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(metrics)), 3.6))
    width = 0.8 / max(1, len(tags))
    for i, (tag, m) in enumerate(tags.items()):
        xs = [j + i * width for j in range(len(metrics))]
        vals = [m.get(k, 0.0) for k in metrics]
        errs = [m.get(f"{k}_std", 0.0) for k in metrics]
        bars = ax.bar(xs, vals, width, yerr=errs, capsize=3, label=tag, color=PALETTE.get(tag))
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks([j + width * (len(tags) - 1) / 2 for j in range(len(metrics))],
                  [_metric_label(k) for k in metrics], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy (test split)")
    ax.set_title("Frozen-encoder accuracy before and after finetuning")
    # below the axis: inside, it would cover the bars, which reach the top on easy metrics
    ax.legend(fontsize=8, ncols=max(1, len(tags)), loc="upper center", bbox_to_anchor=(0.5, -0.17), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _holistic_plot(results: dict[str, dict[str, Any]]) -> bytes:
    methods = list(results)
    keys = ["overall", "seen", "unseen"]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(methods)), 3.6))
    width = 0.26
    colours = {"overall": "#4c72b0", "seen": "#55a868", "unseen": "#c44e52"}
    for i, k in enumerate(keys):
        xs = [j + i * width for j in range(len(methods))]
        bars = ax.bar(xs, [results[m].get(k, 0.0) for m in methods], width, label=k, color=colours[k])
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks([j + width for j in range(len(methods))], methods, fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy (all-class argmax)")
    ax.set_title("Holistic transfer: seen vs unseen target classes")
    ax.legend(fontsize=8, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _as_float(v: Any) -> float:
    """A per-class entry from JSON (float, int, or None for a class without test samples) → float."""
    return float(v) if isinstance(v, (int, float)) else float("nan")


def per_class_heatmap(panels: dict[str, dict[str, Sequence[Any]]], seen: Sequence[int] | None = None,
                      class_names: Sequence[str] | None = None,
                      title: str = "Per-class target accuracy (all-class argmax)") -> bytes:
    """PNG heatmap(s): one panel per entry of ``panels`` ({panel title: {method: per-class accuracies
    (C,)}}), methods × classes, each cell annotated. With ``seen``, the columns are ordered seen
    classes first, then unseen, split by a line and labelled, so forgetting of the unseen classes
    reads left to right. nan/None cells (no test sample) are grey.
    """
    panels = {t: m for t, m in panels.items() if m}
    if not panels:
        raise UftError("per_class_heatmap got no methods: pass {panel: {method: per-class accuracies}}")
    c = max(len(v) for m in panels.values() for v in m.values())
    names = list(class_names) if class_names is not None else [str(k) for k in range(c)]
    seen_set = {int(s) for s in seen} if seen else set()
    cols = [k for k in range(c) if k in seen_set] + [k for k in range(c) if k not in seen_set]
    n_rows = max(len(m) for m in panels.values())
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(len(panels) * (2.2 + 0.62 * c), 1.2 + 0.36 * n_rows + (0.3 if seen_set else 0)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
    im = None
    for ax, (ptitle, methods) in zip(axes[0], panels.items()):
        grid = np.array([[(_as_float(v[k]) if k < len(v) else np.nan) for k in cols] for v in methods.values()])
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                v = grid[i, j]
                ax.text(j, i, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7.5,
                        color="black" if np.isnan(v) or v > 0.6 else "white")
        ax.set_yticks(range(len(methods)), list(methods), fontsize=8)
        ax.set_xticks(range(len(cols)), [names[k] for k in cols], fontsize=8)
        ax.set_xlabel("true class", fontsize=8)
        if ptitle:
            ax.set_title(ptitle, fontsize=9, pad=20 if seen_set else 6)
        if seen_set and len(seen_set) < c:
            n_s = sum(k in seen_set for k in cols)
            ax.axvline(n_s - 0.5, color="white", lw=3)
            ax.axvline(n_s - 0.5, color="#c44e52", lw=1.2)
            for x0, x1, label, colour in ((0, n_s, "seen", "#2f7d32"), (n_s, len(cols), "unseen", "#c44e52")):
                ax.text((x0 + x1 - 1) / 2, -0.75, label, ha="center", va="bottom", fontsize=8.5,
                        fontweight="bold", color=colour, clip_on=False)
            for tick, k in zip(ax.get_xticklabels(), cols):
                tick.set_color("#2f7d32" if k in seen_set else "#c44e52")
        ax.tick_params(length=0)
        for s in ax.spines.values():
            s.set_visible(False)
    h = fig.get_figheight()  # inches above the axes: seen/unseen labels, panel titles, the figure title
    fig.subplots_adjust(top=1 - (0.4 + 0.3 * bool(seen_set) + 0.25 * any(panels)) / h, bottom=0.5 / h)
    cbar = fig.colorbar(im, ax=axes[0].tolist(), fraction=0.025, pad=0.015)
    cbar.ax.tick_params(labelsize=7)
    cbar.set_label("accuracy", fontsize=8)
    fig.suptitle(title + ("" if seen_set else " (seen classes not recorded)"), fontsize=10, y=1 - 0.08 / h, va="top")
    return _png(fig)


START_LABELS = {"source": "source classifier", "adabn": "AdaBN-adapted source classifier"}


def _by_start(results: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Holistic rows grouped by their starting model (``start``; rows without one started from the
    source classifier), in first-seen order: each group becomes its own table."""
    groups: dict[str, list[str]] = {}
    for m, r in results.items():
        groups.setdefault(str(r.get("start", "source")), []).append(m)
    return groups


def holistic_encoders_section(base: dict[str, Any], finetuned: dict[str, Any]) -> list[str]:
    """Markdown: holistic transfer from the base and from the finetuned encoder side by side (same
    source recipe, methods and seed; only the encoder under the source classifier differs). One run,
    one seed: read the difference against the seed spread measured by ``bench/holistic_table.py``."""
    b, f = base.get("results", {}), finetuned["results"]
    cols = ("overall", "seen", "unseen")

    def cell(r: dict[str, Any] | None, c: str) -> str:
        return f"{r[c]:.3f}" if r and isinstance(r.get(c), (int, float)) else "–"

    rows = []
    for m in [*b, *(m for m in f if m not in b)]:
        rb, rf = b.get(m), f.get(m)
        d = (f"{rf['overall'] - rb['overall']:+.3f}" if rb and rf and all(isinstance(r.get("overall"), (int, float))
                                                                           for r in (rb, rf)) else "–")
        rows.append([m, *(f"{cell(rb, c)} → {cell(rf, c)}" for c in cols), d])
    checks = [f"{t} {x['start_check']['accuracy']:.3f}" for t, x in (("base", base), ("finetuned", finetuned))
              if x.get("start_check")]
    return ["### Base vs finetuned encoder", "",
            "The same holistic methods with the source classifier built on the base encoder → on the finetuned "
            "encoder (target test split; one seed)." + (f" Start accuracy on the val split: {', '.join(checks)}."
                                                        if checks else ""), "",
            _md_table(["method", *(f"{c} (base → finetuned)" for c in cols), "Δ overall"], rows), ""]


def start_check_lines(check: dict[str, Any]) -> list[str]:
    """Markdown lines on the source classifier's accuracy on the target (the holistic start): a plain
    line when it is meaningful; a warning (rendered red in HTML) when it is degenerate."""
    line = (f"Source classifier on the target {check.get('split', 'test')} split, before any adaptation: accuracy "
            f"{check['accuracy']:.3f} "
            f"(chance {check['chance']:.3f}); the most predicted class ({check['top_class']}) takes "
            f"{check['top_class_share']:.0%} of the predictions.")
    if not check.get("degenerate"):
        return [line]
    return [f"> {WARNING_PREFIX} {'; '.join(check.get('reasons', []))}. Every row below is measured around a broken "
            "start, so no conclusion can be drawn from this table: fix the source model (recipe, framing) first.", "",
            line]


WARNING_PREFIX = "**WARNING: degenerate start.**"


def _holistic_seen(holistic: dict[str, Any], config: dict[str, Any]) -> list[int] | None:
    """The seen classes, from the holistic metrics (``seen``) or the run config (``holistic_seen``)."""
    raw = holistic.get("seen", config.get("holistic_seen"))
    if raw is None:
        return None
    items = raw.split(",") if isinstance(raw, str) else raw
    try:
        return [int(s) for s in items if str(s).strip()]
    except (TypeError, ValueError):
        return None


PHASE_LABELS = {"pretrain": "pretraining (source)", "finetune": "finetuning (target)"}


def _loss_plot(curves: dict[str, list[tuple[int, float]]]) -> bytes:
    """One panel per training phase, each on its own step axis and loss scale: pretraining and
    finetuning see different data (and finetuning restarts at step 0), so one axis would suggest a
    comparison the numbers do not support. ``curves``: {phase: [(step, loss), ...]}."""
    curves = {n: pts for n, pts in curves.items() if pts}
    plt = _pyplot()
    fig, axes = plt.subplots(1, max(1, len(curves)), figsize=(3.4 * max(1, len(curves)), 3.0), squeeze=False)
    for ax, (name, pts) in zip(axes[0], curves.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="#1f77b4")
        ax.set_title(f"{PHASE_LABELS.get(name, name)}, {len(pts)} points", fontsize=9)
        ax.set_xlabel(f"{name} step", fontsize=8)
        ax.set_ylabel("SSL loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle("Training loss per phase (separate axes: different data, steps restart)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


_NUMBER = re.compile(r"^[-+–]?\d[\d.,]*%?( ± \d[\d.]*)?$|^[–-]$")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    """A GFM table whose number columns are right-aligned and text columns left-aligned (the
    alignment row carries it, so every renderer, MLflow's and ours, applies it)."""
    def numeric(j: int) -> bool:
        cells = [r[j].strip() for r in rows if j < len(r)]
        return any(c not in ("–", "-") for c in cells) and all(_NUMBER.match(c) for c in cells)

    align = ["---:" if numeric(j) else ":---" for j in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


#: The report's names for the encoders (the tables' column names), from the step's encoder keys.
ENCODER_LABELS = {"pretrain": "base", "finetune": "finetuned"}


def _projection_plot(panels: dict[str, tuple[Any, Any]]) -> bytes:
    """One scatter per encoder: 2-D projection ``(N, 2)`` of target test features, coloured by class."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, (name, (xy, labels)) in zip(axes[0], panels.items()):
        # opaque dots (blending would make thousands of colours): the PNG stays small enough to embed
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=4, linewidths=0, vmin=0, vmax=9)
        ax.set_title(f"{name} encoder", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(sc, ax=axes[0].tolist(), label="class", ticks=range(10), shrink=0.8)
    fig.suptitle("Target test features, PCA to 2-D (fit per encoder)", fontsize=11)
    return _png(fig, dpi=90, colors=48)


def promotion_section(m: dict[str, Any], config: dict[str, Any] | None = None) -> list[str]:
    """Markdown lines for the promote step's metrics ``m``: the gate's own explanation (each signal
    for candidate, reference and untrained floor, change, margin, noise, reasons;
    :func:`uft.promote.explain_lines`) and what it was measured on, so that its figures are not read
    as the evaluation tables' (they measure other data)."""
    from uft import promote

    n = (m.get("signals") or {}).get("n_views")
    images = f"{int(n)} " if isinstance(n, (int, float)) else ""
    max_images = int(m.get("max_images") or 1000)
    lines = ["## Promotion gate", ""] + promote.explain_lines(m)
    lines += [f"The gate measures on data that no training step saw and no table above uses: the label-free "
              f"signals on {images}target val images; *val_probe*: a {promote.VAL_SHOTS}-shot linear probe scored "
              f"within the target val split (when it has labels), not the evaluation's few-label probes on the test "
              f"split; *source_retention*: k-NN from up to {2 * max_images} source train images to up to "
              f"{max_images} source val images, not the evaluation's source k-NN on the source test split. "
              "Hence its figures differ from the tables above.", ""]
    return lines


def _data_table(datasets: dict[str, dict[str, Any]]) -> str:
    rows = [[role, str(m.get("name", "")), str(m.get("num_rows", "")),
             ", ".join(f"{k} {v}" for k, v in sorted(m.get("splits", {}).items())),
             str(len(m.get("classes", []))), "×".join(str(v) for v in m.get("image_shape", [])),
             str(len(m.get("origin", {}).get("skipped", []) or []))]
            for role, m in datasets.items()]
    return _md_table(["data", "name", "images", "splits", "classes", "H×W×C", "skipped files"], rows)


def run_description(collected: list[dict[str, Any]], experiment_id: str, run_id: str) -> str:
    """The parent MLflow run's description (markdown, shown at the top of its page): the registry
    decision linked to the model version, the headline accuracies as one compact table, and links
    to the full report. Links are UI routes (``#/...``), so they work on any MLflow host."""
    from uft.tracking import ui_model_version_route, ui_run_route

    lines = []
    promotion = next((c["metrics"] for c in collected if c["step"] == "promote"), None)
    if promotion:
        version, name = promotion.get("version"), promotion.get("registered_model")
        where = (f" — [{name} version {version}]({ui_model_version_route(name, version)})"
                 if version not in (None, "", "None") and name else " — not registered")
        lines += [f"**Decision: {promotion.get('decision')}**{where}", ""]
    tags = _by_tag(collected)
    if tags:
        header, rows = accuracy_table(tags)
        rows = [[_metric_label(r[0]).replace("\n", " ")] + r[1:] for r in rows]
        lines += [_md_table(header, rows), ""]
    lines += ["Full report with plots: [report.md](" + ui_run_route(experiment_id, run_id, "report.md") + ") · "
              "[report.html](" + ui_run_route(experiment_id, run_id, "report.html") + ") (this run's Artifacts tab)."]
    return "\n".join(lines)


def baseline_hint(config: dict[str, Any]) -> str:
    """One line: how this run's finetune relates to plain target-only finetuning (no replay, no
    mixing), and the command that gives the latter, so a reader can tell whether they helped."""
    replay = float(config.get("replay_ratio", 0) or 0) > 0 and int(config.get("replay_size", 0) or 0) > 0
    mixing = str(config.get("mix_op", "none")) != "none"
    if "replay_ratio" not in config and "mix_op" not in config:
        return ""
    if not (replay or mixing):
        return "This finetune is plain target-only SSL (no replay, no mixing)."
    used = " and ".join(x for x, on in (("source replay", replay), ("data mixing", mixing)) if on)
    return (f"This finetune uses {used}. For plain target-only finetuning (same everything else), run "
            "`uft run -p replay_ratio=0 -p mix_op=none` with this run's other parameters and compare "
            "(`uft compare`); `bench/uft_grid.py` measures both over seeds (docs/results.md, Replay and mixing vs naive finetuning).")


def _verdict_lines(tags: dict[str, dict[str, float]], config: dict[str, Any] | None = None,
                   datasets: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Whether finetuning changed the target metrics beyond the few-label probes' label-draw spread and,
    where measured for this configuration, seed noise (:mod:`uft.verdict`)."""
    from uft.verdict import finetune_verdicts, summary_line

    flat = {f"{tag}_{k}": v for tag, m in tags.items() for k, v in m.items()}
    ctx = dict(config or {})
    shape = (datasets or {}).get("target", {}).get("image_shape")
    if shape:  # the input size the encoder saw, for uft.verdict.SEED_NOISE's configuration check
        ctx.setdefault("image_size", shape[0])
    lines = finetune_verdicts(flat, ctx)
    head = [f"**{line}**", ""] if (line := summary_line(flat, ctx)) else []
    return [*head, *[f"- {s}" for s in lines], ""] if lines else []


def build_report(collected: list[dict[str, Any]], config: dict[str, Any],
                 loss_curves: dict[str, list[tuple[int, float]]] | None = None,
                 datasets: dict[str, dict[str, Any]] | None = None,
                 projections: dict[str, tuple[Any, Any]] | None = None) -> tuple[dict[str, bytes], dict[str, float]]:
    """→ ({filename: bytes}, flat summary metrics). ``collected``: [{"step", "metrics"}];
    ``datasets``: {role: dataset manifest}; ``projections``: {encoder name: (xy (N, 2), labels (N,))}."""
    files: dict[str, bytes] = {}
    summary: dict[str, float] = {}
    md = ["# uft run report", ""]
    if datasets:
        md += ["## Data", "", _data_table(datasets), ""]
    tags = _by_tag(collected)
    if tags:
        header, rows = accuracy_table(tags)
        md += ["## Target accuracy (frozen encoder)", "", _md_table(header, rows), "",
               "± = sd over the few-label probe's label draws (one run: not an interval over seeds).", ""]
        md += _verdict_lines(tags, config, datasets)
        md += [line for line in (baseline_hint(config), config.get("ssl_head_note", "")) if line]
        md += ["", "![accuracy](accuracy.png)", ""]
        files["accuracy.png"] = _accuracy_plot(tags)
        for tag, m in tags.items():
            summary.update({f"{tag}_{k}": v for k, v in m.items() if isinstance(v, (int, float))})
    by_encoder = {c["metrics"].get("encoder", "base"): c["metrics"] for c in collected if c["step"] == "holistic"}
    holistic = by_encoder.get("base")
    if holistic and holistic.get("results"):
        res = holistic["results"]
        cols = ["overall", "seen", "unseen", "ausuc", "ncm"]
        md += ["## Holistic transfer (target labels for seen classes only)", ""]
        check = holistic.get("start_check")
        if check:
            md += [*start_check_lines(check), ""]
            summary["holistic_start_accuracy"] = float(check["accuracy"])
            summary["holistic_start_degenerate"] = float(bool(check["degenerate"]))
        for start, names in _by_start(res).items():  # one table per starting point, never mixed
            rows = [[m, START_LABELS.get(start, start)] + [f"{res[m][c]:.3f}" if isinstance(res[m].get(c), (int, float))
                                                         else "–" for c in cols] for m in names]
            md += [_md_table(["method", "start", *cols], rows), ""]
        md += ["![holistic](holistic.png)", ""]
        files["holistic.png"] = _holistic_plot(res)
        per_class = {m: r["per_class"] for m, r in res.items() if isinstance(r.get("per_class"), list) and r["per_class"]}
        if per_class:
            md += ["### Per-class accuracy", "", "![per-class accuracy](holistic_per_class.png)", ""]
            files["holistic_per_class.png"] = per_class_heatmap({"": per_class}, _holistic_seen(holistic, config))
        summary.update({f"holistic_{m}_{k}": v for m, r in res.items() for k, v in r.items() if k in cols and isinstance(v, (int, float))})
    finetuned = by_encoder.get("finetuned")
    if finetuned and finetuned.get("results"):
        md += holistic_encoders_section(holistic or {}, finetuned)
        summary.update({f"holistic_finetuned_{m}_{k}": v for m, r in finetuned["results"].items() for k, v in r.items()
                        if k in ("overall", "seen", "unseen", "ausuc", "ncm") and isinstance(v, (int, float))})
    promotion = next((c["metrics"] for c in collected if c["step"] == "promote"), None)
    if promotion:  # label-free signals and the registry decision (uft.promote)
        md += promotion_section(promotion, config)
        summary["promoted"] = float(bool(promotion.get("promoted")))
    if projections:
        projections = {ENCODER_LABELS.get(n, n): p for n, p in projections.items()}
        files["projection.png"] = _projection_plot(projections)
        md += ["## Target features before and after finetuning", "", "![projection](projection.png)", ""]
    if loss_curves:
        files["loss.png"] = _loss_plot(loss_curves)
        md += ["## Training loss", "", "![loss](loss.png)", ""]
    params = [[k, f"`{v}`"] for k, v in sorted(config.items()) if k != "ssl_head_note"]  # a note, not a parameter
    md += ["## Configuration", "", _md_table(["parameter", "value"], params), ""]
    text = embed_images("\n".join(md), files)
    files["report.md"] = text.encode()
    files["report.html"] = _html(text).encode()
    return files, summary


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
          "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;"
          "vertical-align:top}th{background:#f4f4f4}img{max-width:100%}code{background:#f4f4f4;padding:0 .2rem}"
          "blockquote{color:#b00020;font-weight:bold;border-left:4px solid #b00020;margin:1rem 0;padding-left:.6rem}")


_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def relink_images(md: str, files: dict[str, bytes], url_of: Callable[[str], str]) -> str:
    """``md`` with every image of one of ``files`` (linked by name, ``![alt](name.png)``, or
    embedded as its data: URI) pointing to ``url_of(name)`` instead."""
    names = {n: n for n in files if n.endswith(".png")}
    names.update({_data_uri(files[n]): n for n in list(names)})

    def relink(m: re.Match) -> str:
        name = names.get(m.group(2))
        return m.group(0) if name is None else f"![{m.group(1)}]({url_of(name)})"

    return _IMAGE.sub(relink, md)


def embed_images(md: str, files: dict[str, bytes]) -> str:
    """``md`` with its plots embedded as data: URIs: the markdown shows them wherever it is opened
    alone (a download, the KFP UI's markdown viewer, our HTML page)."""
    return relink_images(md, files, lambda name: _data_uri(files[name]))


def mlflow_markdown(md: str, files: dict[str, bytes], run_id: str) -> str:
    """``md`` for MLflow's artifact viewer, its plots read from run ``run_id``'s artifacts.

    That viewer (mlflow/server/js ShowArtifactMarkdownView) passes react-markdown's
    ``defaultUrlTransform``, which blanks data: URLs, and its ``img`` renderer
    (GenAIMarkdownRenderer) prints any URL without a scheme as text. ``http:get-artifact?…`` has a
    scheme and, by the URL standard, resolves like a relative URL against a page of the same scheme:
    the server's own ``/get-artifact`` route (under any ``--static-prefix``). On a UI served over
    https the images would not resolve (the other views of the report still work)."""
    from urllib.parse import urlencode

    return relink_images(md, files, lambda name: "http:get-artifact?" + urlencode({"path": name, "run_uuid": run_id}))


def _data_uri(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def _html(md: str) -> str:
    """The report's markdown (images already embedded) as one self-contained HTML page, rendered by
    markdown-it-py (CommonMark + GFM tables; raw HTML in the markdown is escaped, not passed)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>uft report</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}</body></html>\n")
