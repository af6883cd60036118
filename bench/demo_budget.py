"""What the training budget of `make run`'s demo buys: the whole pipeline (`uft run` on the bundled
MNIST → UCI digits, each budget in a fresh state directory) at several step budgets, with its wall
time and the numbers the demo exists to show, side by side as markdown.

    python -m bench.demo_budget                                   # the budgets below
    python -m bench.demo_budget --budget 300,200,600,150 --budget 100,60,200,50
    python -m bench.demo_budget --out bench/results/demo_budget.md

A budget is ``pretrain_steps,finetune_steps,holistic_source_steps,holistic_steps``. The columns say
whether the demo stays meaningful at that budget: the base encoder far above chance (k-NN, 10
classes: chance 0.1), finetuning helping on the target, the source kept (source k-NN), and the
holistic source classifier non-degenerate on the target (its overall accuracy; the report flags
a degenerate start)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench.common import emit, load_avg, table
from bench.local_run import uft_run

DEFAULT_BUDGETS = ("300,200,600,150", "150,100,300,75", "100,60,200,50")
KNOBS = ("pretrain_steps", "finetune_steps", "holistic_source_steps", "holistic_steps")


def metrics_of(state: Path) -> dict[str, float]:
    """The metrics of the one pipeline run in the fresh state directory ``state`` (its parent MLflow run)."""
    from mlflow.tracking import MlflowClient

    from uft import tracking

    client = MlflowClient(f"sqlite:///{state / 'mlflow.db'}")
    exp = client.get_experiment_by_name("uft")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.TAG_STEP}` = '{tracking.PARENT}'")
    if len(runs) != 1:
        raise SystemExit(f"expected one pipeline run in {state}, found {len(runs)}")
    return dict(runs[0].data.metrics)


def run(budgets: list[str], extra: list[str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    head = ["pretrain / finetune / holistic source / holistic steps", "wall s", "CPU s", "base k-NN", "finetuned k-NN",
            "base 1-shot", "finetuned 1-shot", "base 5-shot", "finetuned 5-shot", "source k-NN base → finetuned",
            "holistic source overall", "adabn overall"]
    rows = []
    for budget in budgets:
        values = budget.split(",")
        if len(values) != len(KNOBS):
            raise SystemExit(f"--budget {budget!r}: give {len(KNOBS)} comma-separated step counts ({', '.join(KNOBS)})")
        params = [f"{k}={v}" for k, v in zip(KNOBS, values)] + extra
        with tempfile.TemporaryDirectory(prefix="uft-bench-budget-") as tmp:
            state = Path(tmp) / "state"
            r = uft_run(state, params, {**env, "UFT_TASK_CACHE": "0"})
            if r.rc != 0:
                raise SystemExit(f"`uft run {' '.join(params)}` failed ({r.rc}):\n{r.tail}")
            m = metrics_of(state)
        g = lambda k: m.get(k, float("nan"))  # noqa: E731
        rows.append([" / ".join(values), r.wall, r.cpu, g("base_knn"), g("finetuned_knn"), g("base_linear_1shot"),
                     g("finetuned_linear_1shot"), g("base_linear_5shot"), g("finetuned_linear_5shot"),
                     f"{g('base_source_knn'):.3f} → {g('finetuned_source_knn'):.3f}", g("holistic_source_overall"),
                     g("holistic_adabn_overall")])
    cmd = " ".join(["python -m bench.demo_budget", *[f"--budget {b}" for b in budgets], *[f"-p {p}" for p in extra]])
    return (f"## `make run`'s demo at several training budgets\n\n`{cmd}` · load average {load_avg()} · "
            f"{os.cpu_count()} cores · wall = `uft run` process, first run in a fresh state (no cache)\n\n"
            + table(head, rows))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", action="append", default=None, help="P,F,HS,H steps (repeatable)")
    ap.add_argument("-p", "--param", action="append", default=[], help="another pipeline parameter KEY=VALUE")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    a = ap.parse_args()
    emit(run(a.budget or list(DEFAULT_BUDGETS), a.param), a.out)
