"""Whole `uft run` processes (real SeaweedFS, MLflow on sqlite, kfp.local tasks): a second run in
the same checkout is refused at once, `uft ui` shares the running run's S3 server and leaving it
does not stop the run's, SIGTERM stops every task and the server and marks the MLflow runs
KILLED/FAILED; bad input that only a step can see fails once, naming that step."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uft.orchestrate.lifecycle import descendants
from uft.services import RECORD, free_port, pid_alive

pytestmark = pytest.mark.s3  # each starts real runs
UFT = [sys.executable, "-m", "uft.cli"]
TINY = ["-p", "source_limit=200", "-p", "target_limit=200", "-p", "finetune_steps=2", "-p", "batch_size=32",
        "-p", "encoder_width=8", "-p", "holistic_steps=2", "-p", "probe_draws=1", "-p", "label_shots=1",
        "-p", "replay_size=50", "-p", "holistic_source_steps=10", "-p", "holistic_methods=naive"]


def _env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "UFT_"))}
    return {**env, "UFT_STATE_DIR": str(state)}


def _group(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid and pid_alive(int(d.name)):
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _wait_gone(pids: list[int], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not any(pid_alive(p) for p in pids)


def _statuses(state: Path) -> list[str]:
    db = state / "mlflow.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as con:
            return [r[0] for r in con.execute("select status from runs")]
    except sqlite3.OperationalError:  # schema not there yet
        return []


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the run exited ({proc.returncode}): {log.read_text()[-3000:] if log else ''}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {log.read_text()[-3000:] if log else ''}"
        time.sleep(0.5)


def test_second_run_refused_ui_shares_and_sigterm_cleans_up(tmp_path):
    state, log = tmp_path / "state", tmp_path / "a.log"
    env = _env(state)
    with open(log, "w") as out:  # pretrain_steps so large that the run is still going when stopped
        a = subprocess.Popen([*UFT, "run", "-v", *TINY, "-p", "pretrain_steps=1000000"], env=env, cwd=tmp_path,
                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(lambda: "RUNNING" in _statuses(state), 600, "a step run in MLflow", a, log)
        record = json.loads((state / "s3" / RECORD).read_text())

        t0 = time.monotonic()
        b = subprocess.run([*UFT, "run", *TINY], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        refused_in = time.monotonic() - t0
        assert b.returncode == 2, b.stdout + b.stderr
        assert f"another uft run (pid {a.pid}, started" in " ".join(b.stderr.split()), b.stderr
        print(f"second run refused in {refused_in:.1f} s")

        ui = subprocess.Popen([*UFT, "ui", "--port", str(free_port())], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            note = ui.stderr.readline()
            assert note.startswith(f"local S3: sharing the server of another running uft process (pid {record['pid']}"), note
            _wait(lambda: descendants(ui.pid), 120, "MLflow's UI process")
            mlflow_ui = descendants(ui.pid)
            ui.send_signal(signal.SIGTERM)  # to `uft ui` only: it must stop MLflow's UI (own session) itself
            assert ui.wait(120) == 0
            assert _wait_gone(mlflow_ui), [p for p in mlflow_ui if pid_alive(p)]
        finally:
            if ui.poll() is None:
                os.killpg(ui.pid, signal.SIGKILL)
                ui.wait()
        assert pid_alive(record["pid"]) and a.poll() is None  # the UI left; the run and its server go on

        t0 = time.monotonic()
        a.send_signal(signal.SIGTERM)  # to the main process only, as `timeout` or a CI cancel does
        rc = a.wait(180)
        print(f"run stopped {time.monotonic() - t0:.1f} s after SIGTERM")
        text = log.read_text()
        assert rc == 128 + signal.SIGTERM, text[-3000:]
        assert "stopped by SIGTERM" in " ".join(text.split())
        assert not pid_alive(record["pid"]) and not (state / "s3" / RECORD).exists()  # the S3 server is gone
        assert _group(a.pid) == []  # and every task
        statuses = _statuses(state)
        assert "KILLED" in statuses and "RUNNING" not in statuses, statuses
        with sqlite3.connect(state / "mlflow.db") as con:
            assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
            a.wait()


def test_bad_input_seen_only_by_a_step_fails_once_naming_it(tmp_path):
    """Truncated images pass preflight (it lists files, it does not decode them): ingest fails,
    is not retried, the tasks after it are not started, and the error names ingest."""
    bad = tmp_path / "trunc"
    for c in ("a", "b"):
        (bad / c).mkdir(parents=True)
        (bad / c / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    state = tmp_path / "state"
    t0 = time.monotonic()
    res = subprocess.run([*UFT, "run", "-v", "--target", f"{bad}#unlabelled", *TINY, "-p", "pretrain_steps=2"],
                         env=_env(state), cwd=tmp_path, capture_output=True, text=True,
                         timeout=900)
    took = time.monotonic() - t0
    out = re.sub(r"\x1b\[[0-9;]*m", "", res.stdout + res.stderr)  # kfp.local colours task names
    assert res.returncode == 2, out[-3000:]
    msg = " ".join(out.split())
    assert f"pipeline failed (step ingest-2): dataset {bad} has no usable images" in msg, out[-3000:]
    assert out.count("Executing task 'ingest-2'") == 1 and "Retrying" not in out and "retrying in" not in out
    print(f"failed in {took:.1f} s")
