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
a degenerate start).

``--choose`` applies the rule pre-registered in docs/results.md ("Choosing the demo budget") to
:data:`CANDIDATES`: each budget on the selection seeds, judged on val-split quantities only (the
promotion gate's decision, the holistic start check), the smallest that qualifies on every seed,
then that budget on the validation seeds, judged on the end-of-run verdict (test split) and the gate."""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path

from bench.common import emit, load_avg, table
from bench.local_run import uft_run

DEFAULT_BUDGETS = ("300,200,600,150", "150,100,300,75", "100,60,200,50")
KNOBS = ("pretrain_steps", "finetune_steps", "holistic_source_steps", "holistic_steps")
#: The pre-registered rule's candidates (smallest first), selection seeds and validation seeds.
CANDIDATES = ("20,15,80,20", "30,20,100,25", "40,30,120,30", "60,40,200,50")
SELECT_SEEDS, VALIDATE_SEEDS = (0, 1, 2), (3, 4)
_GATE = re.compile(r"gain over the base encoder ([+-][\d.]+), 90% paired-bootstrap interval \[([+-][\d.]+), ([+-][\d.]+)\]")
_VERDICT = re.compile(r"Verdict: (\d+) of (\d+) few-label probes moved beyond")


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


def run_env() -> dict[str, str]:
    """This process's environment less its AWS/MLflow settings: each `uft run` starts its own services."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}


def one_run(budget: str, extra: list[str], env: dict[str, str]) -> dict[str, float]:
    """`uft run` at ``budget`` (P,F,HS,H) in a fresh state → its parent run's metrics, plus the run's
    wall/CPU, the gate's val gain and 90 % interval (``gate_gain``, ``gate_low``, ``gate_high``) and
    the verdict's count of few-label probes moved beyond their spread (``moved``, of ``judged``)."""
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
    nan = float("nan")
    gate, verdict = _GATE.search(r.tail), _VERDICT.search(r.tail)
    m.update(wall=r.wall, cpu=r.cpu, gate_gain=float(gate.group(1)) if gate else nan,
             gate_low=float(gate.group(2)) if gate else nan, gate_high=float(gate.group(3)) if gate else nan,
             moved=float(verdict.group(1)) if verdict else nan, judged=float(verdict.group(2)) if verdict else nan)
    return m


def qualifies(m: dict[str, float]) -> bool:
    """The selection half of the rule, on val-split quantities only: the gate promoted the finetuned
    encoder (its val gain's lower bound above the margin) and no holistic start is degenerate."""
    degenerate = [v for k, v in m.items() if k.endswith("start_degenerate")]
    return m.get("promoted") == 1.0 and bool(degenerate) and not any(degenerate)


def validates(m: dict[str, float]) -> bool:
    """The validation half: the gate promoted and the verdict (test split) moved ≥ 2 of 3 few-label probes."""
    return m.get("promoted") == 1.0 and m.get("moved", 0) >= 2


def choose(extra: list[str]) -> str:
    """The pre-registered choice: every candidate on every selection seed, the smallest that qualifies
    on all, then it on the validation seeds (the next qualifying one if it fails) → markdown."""
    env = run_env()
    head = ["budget (P / F / HS / H)", "seed", "role", "wall s", "gate val gain [90 % interval]", "promoted",
            "holistic start (val) degenerate", "few-label probes moved (test)", "base → finetuned k-NN (test)",
            "holistic source overall (test)", "passes"]
    rows, qualified = [], []

    def row(budget: str, seed: int, role: str, m: dict[str, float], ok: bool) -> None:
        rows.append([budget.replace(",", " / "), seed, role, m["wall"],
                     f"{m['gate_gain']:+.3f} [{m['gate_low']:+.3f}, {m['gate_high']:+.3f}]", int(m.get("promoted", 0)),
                     int(m.get("holistic_start_degenerate", -1)), f"{m['moved']:.0f} of {m['judged']:.0f}",
                     f"{m.get('base_knn', float('nan')):.3f} → {m.get('finetuned_knn', float('nan')):.3f}",
                     m.get("holistic_source_overall", float("nan")), "yes" if ok else "no"])

    for budget in CANDIDATES:
        results = [one_run(budget, [f"seed={s}", *extra], env) for s in SELECT_SEEDS]
        for s, m in zip(SELECT_SEEDS, results):
            row(budget, s, "select", m, qualifies(m))
        if all(qualifies(m) for m in results):
            qualified.append(budget)
    chosen = ""
    for budget in qualified:
        results = [one_run(budget, [f"seed={s}", *extra], env) for s in VALIDATE_SEEDS]
        for s, m in zip(VALIDATE_SEEDS, results):
            row(budget, s, "validate", m, validates(m))
        if all(validates(m) for m in results):
            chosen = budget
            break
    cmd = " ".join(["python -m bench.demo_budget --choose", *[f"-p {p}" for p in extra]])
    verdict = (f"**Chosen: {chosen.replace(',', ' / ')}** (the smallest candidate qualifying on seeds "
               f"{', '.join(map(str, SELECT_SEEDS))} and validated on seeds {', '.join(map(str, VALIDATE_SEEDS))})"
               if chosen else "**No candidate qualified and validated**: keep the current budget")
    return (f"## Choosing the demo budget (pre-registered rule)\n\n`{cmd}` · load average {load_avg()} · "
            f"{os.cpu_count()} cores · each row one `uft run` in a fresh state (no cache)\n\n"
            + table(head, rows) + f"\n\n{verdict}\n")


def run(budgets: list[str], extra: list[str]) -> str:
    env = run_env()
    head = ["pretrain / finetune / holistic source / holistic steps", "wall s", "CPU s", "base k-NN", "finetuned k-NN",
            "base 1-shot", "finetuned 1-shot", "base 5-shot", "finetuned 5-shot", "source k-NN base → finetuned",
            "holistic source overall", "adabn overall"]
    rows = []
    for budget in budgets:
        m = one_run(budget, extra, env)
        g = lambda k: m.get(k, float("nan"))  # noqa: E731
        rows.append([budget.replace(",", " / "), m["wall"], m["cpu"], g("base_knn"), g("finetuned_knn"), g("base_linear_1shot"),
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
    ap.add_argument("--choose", action="store_true", help="apply the pre-registered rule to CANDIDATES")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    a = ap.parse_args()
    emit(choose(a.param) if a.choose else run(a.budget or list(DEFAULT_BUDGETS), a.param), a.out)
