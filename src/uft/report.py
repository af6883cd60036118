"""The run report: a markdown + HTML summary with plots, built from the steps' metrics."""

from __future__ import annotations

import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PALETTE = {"base": "#8c8c8c", "finetuned": "#1f77b4"}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


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


def _accuracy_plot(tags: dict[str, dict[str, float]]) -> bytes:
    metrics = sorted({k for m in tags.values() for k in m if not k.endswith("_std")}, key=_metric_order)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(metrics)), 3.6))
    width = 0.8 / max(1, len(tags))
    for i, (tag, m) in enumerate(tags.items()):
        xs = [j + i * width for j in range(len(metrics))]
        vals = [m.get(k, 0.0) for k in metrics]
        errs = [m.get(f"{k}_std", 0.0) for k in metrics]
        bars = ax.bar(xs, vals, width, yerr=errs, capsize=3, label=tag, color=PALETTE.get(tag))
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks([j + width * (len(tags) - 1) / 2 for j in range(len(metrics))],
                  [k.replace("linear_", "linear ").replace("_", " ") for k in metrics], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy (target test split)")
    ax.set_title("Target accuracy before and after finetuning")
    ax.legend(loc="lower right", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _holistic_plot(results: dict[str, dict[str, Any]]) -> bytes:
    methods = list(results)
    keys = ["overall", "seen", "unseen"]
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


def _loss_plot(curves: dict[str, list[tuple[int, float]]]) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, pts in curves.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("SSL loss")
    ax.set_title("Training loss")
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def build_report(collected: list[dict[str, Any]], config: dict[str, Any],
                 loss_curves: dict[str, list[tuple[int, float]]] | None = None) -> tuple[dict[str, bytes], dict[str, float]]:
    """→ ({filename: bytes}, flat summary metrics). ``collected``: [{"step", "metrics"}]."""
    files: dict[str, bytes] = {}
    summary: dict[str, float] = {}
    md = ["# uft run report", ""]
    tags = _by_tag(collected)
    if tags:
        header, rows = accuracy_table(tags)
        md += ["## Target accuracy (frozen encoder)", "", _md_table(header, rows), "", "![accuracy](accuracy.png)", ""]
        files["accuracy.png"] = _accuracy_plot(tags)
        for tag, m in tags.items():
            summary.update({f"{tag}_{k}": v for k, v in m.items() if isinstance(v, (int, float))})
    holistic = next((c["metrics"] for c in collected if c["step"] == "holistic"), None)
    if holistic:
        res = holistic["results"]
        cols = ["overall", "seen", "unseen", "ausuc", "ncm"]
        rows = [[m] + [f"{r[c]:.3f}" if isinstance(r.get(c), (int, float)) else "–" for c in cols] for m, r in res.items()]
        md += ["## Holistic transfer (target labels for seen classes only)", "", _md_table(["method", *cols], rows), "",
               "![holistic](holistic.png)", ""]
        files["holistic.png"] = _holistic_plot(res)
        summary.update({f"holistic_{m}_{k}": v for m, r in res.items() for k, v in r.items() if k in cols and isinstance(v, (int, float))})
    if loss_curves:
        files["loss.png"] = _loss_plot(loss_curves)
        md += ["## Training loss", "", "![loss](loss.png)", ""]
    md += ["## Configuration", "", _md_table(["parameter", "value"], [[k, f"`{v}`"] for k, v in sorted(config.items())]), ""]
    text = "\n".join(md)
    files["report.md"] = text.encode()
    files["report.html"] = _html(text, files).encode()
    return files, summary


def _html(md: str, files: dict[str, bytes]) -> str:
    """A dependency-free HTML rendering: headings, tables and images from our own markdown subset."""
    import base64

    out = ["<!doctype html><html><head><meta charset='utf-8'><title>uft report</title>",
           "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
           "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;"
           "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>"]
    table: list[list[str]] = []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                table.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if table:
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in table[0]) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{html.escape(c.strip('`'))}</td>" for c in r) + "</tr>" for r in table[1:]]
            out.append("</table>")
            table = []
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("!["):
            name = line[line.index("(") + 1: line.index(")")]
            if name in files:
                out.append(f"<img alt='{name}' src='data:image/png;base64,{base64.b64encode(files[name]).decode()}'>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    out.append("</body></html>")
    return "\n".join(out)
