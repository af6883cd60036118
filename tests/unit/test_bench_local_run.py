"""bench/local_run.py reads `uft run`'s per-task lines (wall, CPU or "cached") into its table."""

from __future__ import annotations

from bench.local_run import Run, parse_tasks, report

OUT = """preflight ok in 0.2 s
  ✓ ingest                   13.1 s  cpu   6.2 s
  ✓ pretrain                 91.0 s  cpu  88.5 s
  ✗ knn-eval-2                4.0 s  cpu   3.5 s
  ✓ report                    0.0 s  cached (no process)
MLflow parent run: abc
"""


def test_parse_tasks_reads_wall_cpu_and_cached():
    assert parse_tasks(OUT) == {"ingest": (13.1, 6.2), "pretrain": (91.0, 88.5), "knn-eval-2": (4.0, 3.5),
                                "report": (0.0, None)}


def test_report_puts_both_runs_side_by_side_with_the_driver_share():
    first = Run(120.0, 110.0, 0, parse_tasks(OUT))
    rerun = Run(15.0, 12.0, 0, {"ingest": (3.0, 2.5), "pretrain": (0.0, None)})
    md = report(first, rerun, "uft run")
    assert "| pretrain | 91.0 | 88.5 | 0.0 | cached |" in md
    assert "| knn-eval-2 | 4.0 | 3.5 | – | – |" in md
    # driver = total CPU minus the tasks' CPU: 110 − (6.2 + 88.5 + 3.5) and 12 − 2.5
    assert "| driver and services |  | 11.8 |  | 9.5 |" in md
    assert "| **total** | **120.0** | **110.0** | **15.0** | **12.0** |" in md
