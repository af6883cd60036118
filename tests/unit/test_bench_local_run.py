"""bench/local_run.py reads `uft run`'s per-task lines (wall, CPU or "cached") into its table."""

from __future__ import annotations

import pytest

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


def test_demo_budget_is_read_from_the_makefile(tmp_path):
    from bench.local_run import demo_budget

    mk = tmp_path / "Makefile"
    mk.write_text("X = 1\nDEMO_BUDGET ?= -p pretrain_steps=60 --param finetune_steps=40\nrun:\n\tuft run $(DEMO_BUDGET)\n")
    assert demo_budget(mk) == ["pretrain_steps=60", "finetune_steps=40"]
    assert all("=" in p for p in demo_budget())  # the real Makefile still has the line
    mk.write_text("run:\n")
    with pytest.raises(SystemExit, match="no DEMO_BUDGET"):
        demo_budget(mk)


def test_old_code_comes_first_on_the_path(tmp_path):
    from bench.local_run import old_code_env

    env = old_code_env({"PYTHONPATH": "/x", "HOME": "h"}, tmp_path)
    assert env["PYTHONPATH"].split(":") == [str(tmp_path / "src"), str(tmp_path), "/x"] and env["HOME"] == "h"
    assert old_code_env({}, tmp_path)["PYTHONPATH"] == f"{tmp_path / 'src'}:{tmp_path}"


def test_side_by_side_table_has_spread_ratio_and_load():
    from bench.local_run import side_by_side, spread

    assert spread([3.0, 1.0, 2.0]) == "2.0 (1.0–3.0)" and spread([4.0]) == "4.0" and spread([]) == "–"

    def pair(first: float, rerun: float, load: float = 1.0) -> tuple[Run, Run]:
        return Run(first, first * 0.9, 0, load=load), Run(rerun, rerun * 0.5, 0, load=load)

    tree = [pair(60.0, 4.0), pair(62.0, 5.0, load=0.5), pair(58.0, 4.5)]
    old = [pair(100.0, 38.0), pair(104.0, 40.0), pair(98.0, 36.0, load=2.0)]
    md = side_by_side(tree, old, "a23d64c", "uft run -p pretrain_steps=60")
    assert "| first run, wall | 60.0 (58.0–62.0) | 100.0 (98.0–104.0) | 0.60 |" in md
    assert "| cached rerun, wall | 4.5 (4.0–5.0) | 38.0 (36.0–40.0) | 0.12 |" in md
    assert "| first run, CPU | 54.0 (52.2–55.8) | 90.0 (88.2–93.6) | 0.60 |" in md
    assert "3 rounds, alternating" in md and "1.0, 1.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0" in md


def test_a_run_in_a_terminal_sees_one_and_its_output_is_read_back_plain():
    import sys

    from bench.local_run import _run_in_terminal

    code = "import sys; print('\\x1b[32m✓\\x1b[0m tty', sys.stdout.isatty(), sys.stderr.isatty()); sys.exit(3)"
    rc, out = _run_in_terminal([sys.executable, "-c", code], {"PATH": "/usr/bin:/bin"}, None)
    assert rc == 3 and "✓ tty True True" in out and "\x1b" not in out


def test_the_user_env_has_no_benchmark_progress_setting(monkeypatch):
    import bench.local_run as lr

    monkeypatch.setenv("UFT_PROGRESS", "off")  # what importing bench.common does to this process
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setattr(lr, "_SHELL_PROGRESS", None)
    env = lr.user_env()
    assert "UFT_PROGRESS" not in env and "AWS_ACCESS_KEY_ID" not in env
    monkeypatch.setattr(lr, "_SHELL_PROGRESS", "lines")  # the caller's own shell had set it
    assert lr.user_env()["UFT_PROGRESS"] == "lines"


def test_side_by_side_shows_each_task_of_both_codes():
    from bench.local_run import side_by_side

    a = (Run(100.0, 90.0, 0, {"pretrain": (20.0, 19.0), "holistic-2": (13.0, 12.5)}), Run(10.0, 9.0, 0, {}))
    b = (Run(60.0, 55.0, 0, {"pretrain": (18.0, 17.0)}), Run(9.0, 8.0, 0, {}))
    md = side_by_side([a], [b], "abc1234", "uft run")
    assert "| first run, wall | 100.0 | 60.0 | 1.67 |" in md
    assert "| pretrain | 20.0 (19.0) | 18.0 (17.0) |" in md and "| holistic-2 | 13.0 (12.5) | – |" in md


def test_side_by_side_quotes_the_estimate_against_the_training():
    from bench.local_run import side_by_side

    tail = "x\ntraining took 12 s (pretrain 7 s + ssl_finetune 5 s); estimated before the run: 10 s (-17%, within ±30%)\n"
    a = (Run(60.0, 80.0, 0, {}, tail=tail), Run(9.0, 8.0, 0, {}))
    b = (Run(55.0, 70.0, 0, {}), Run(9.0, 8.0, 0, {}))
    md = side_by_side([a], [b], "abc1234", "uft run")
    assert '"training took 12 s (pretrain 7 s + ssl_finetune 5 s); estimated before the run: 10 s (-17%, within ±30%)"' in md
