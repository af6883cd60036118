"""The fork server runs kfp.local's tasks as forks of a warm interpreter, and each task still gets
what a fresh ``python3`` would: its own environment (the task's env vars included), working
directory, stdout, exit status and signals; a task whose start-up environment differs gets a fresh
interpreter. Executed through kfp.local's SubprocessRunner, as `uft run` does."""

# no `from __future__ import annotations`: kfp reads the component's annotations as types

import json
import os
import re
import signal
import subprocess
import time

import pytest
from kfp import dsl, local

from uft.orchestrate import forkserver


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def whoami(tag: str, out: dsl.Output[dsl.Artifact]):
    """Record how this task was started: pid, parent, env, cwd, and whether torch came preloaded."""
    import json
    import os
    import sys

    print(f"hello from {tag}")
    with open(out.path, "w") as f:
        with open(f"/proc/{os.getppid()}/stat") as stat:  # the waiter's parent: the server that forked it
            server = int(stat.read().rsplit(")", 1)[1].split()[1])
        json.dump({"pid": os.getpid(), "ppid": os.getppid(), "server": server, "tag_env": os.environ.get("WHOAMI_TAG"),
                   "omp": os.environ.get("OMP_NUM_THREADS"), "cwd": os.getcwd(),
                   "torch_preloaded": "torch" in sys.modules, "argv0": sys.argv[0],
                   "mlflow_packages_mapped": getattr(sys.modules.get("mlflow.utils.requirements_utils"),
                                                     "_PACKAGES_TO_MODULES", None) is not None,
                   "s3_models_parsed": bool(getattr(sys.modules.get("uft.store"), "_MODELS", None))}, f)


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def fails():
    raise RuntimeError("this task fails on purpose")


@pytest.fixture(scope="module")
def shim():
    """One server for the tests that need no start-up environment of their own (each start costs
    a preload: seconds)."""
    with forkserver.serving() as path:
        assert forkserver.wait_ready(path)
        yield path


def _run(tmp_path, shim: str, component) -> tuple[dict, str]:
    """Run ``component`` as a one-task kfp.local pipeline through the fork server → (its record, output)."""
    import contextlib
    import io

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=False)
    buf = io.StringIO()
    with forkserver.kfp_tasks_use(shim), contextlib.redirect_stdout(buf):
        task = component(tag="t1") if component is whoami else component()
    record = {}
    if component is whoami and task.outputs.get("out") is not None:
        with open(task.outputs["out"].path) as f:
            record = json.load(f)
    return record, re.sub(r"\x1b\[[0-9;]*m", "", buf.getvalue())


def test_task_is_a_fork_of_the_warm_server_with_its_own_env(tmp_path, monkeypatch, shim):
    monkeypatch.setenv("WHOAMI_TAG", "set-after-the-server-started")
    monkeypatch.chdir(tmp_path)
    rec, out = _run(tmp_path, shim, whoami)
    assert rec["torch_preloaded"], rec  # a fresh interpreter would not have torch loaded
    assert rec["tag_env"] == "set-after-the-server-started" and rec["cwd"] == str(tmp_path)
    assert rec["argv0"].endswith("executor_main.py")
    assert "hello from t1" in out
    assert f"{forkserver.CPU_LINE} " in out  # the shim reports the forked task's CPU seconds


def test_failure_is_reported_as_failure(tmp_path, shim):
    _, out = _run(tmp_path, shim, fails)
    assert "this task fails on purpose" in out and "finished with status FAILURE" in out


def test_startup_env_difference_gets_a_fresh_interpreter(tmp_path, monkeypatch):
    """OMP_NUM_THREADS is read when torch starts: a task that sets another value must not inherit
    the server's torch, so the shim runs the real interpreter."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with forkserver.serving() as shim:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the task's value differs from the server's
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
                   raise_on_error=True)
        with forkserver.kfp_tasks_use(shim):
            task = whoami(tag="fresh")
        rec = json.loads(open(task.outputs["out"].path).read())
        reasons = forkserver.fallbacks(shim)
    assert rec["omp"] == "2" and not rec["torch_preloaded"]
    # not silent: the server said which variable differed, with both values
    assert reasons == ["start-up environment differs from the server's: OMP_NUM_THREADS (server: '1', task: '2')"]


def test_what_the_driver_sets_after_the_server_started_does_not_reach_the_tasks(tmp_path, monkeypatch, shim):
    """`uft run` imports torch's inductor (the pre-run estimate) after the server started, and that
    writes TORCHINDUCTOR_CACHE_DIR into os.environ: the tasks get the environment the server
    started with, so they are still forked, and the driver's own value is back afterwards."""
    before = forkserver.fallbacks(shim)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "set-after-the-server-started"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)
    with forkserver.kfp_tasks_use(shim), forkserver.tasks_get_startup_env(shim) as reset:
        task = whoami(tag="pinned")
    rec = json.loads(open(task.outputs["out"].path).read())
    assert rec["torch_preloaded"] and forkserver.fallbacks(shim) == before
    assert list(reset) == ["TORCHINDUCTOR_CACHE_DIR"]
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "set-after-the-server-started")


def test_what_the_driver_sets_during_the_run_does_not_reach_later_tasks(tmp_path, monkeypatch, shim):
    """The estimate is measured in a thread beside the first tasks, and its optimizer imports
    torch._dynamo, which writes TORCHINDUCTOR_CACHE_DIR mid-run: every later task still gets the
    server's start environment (a reset once at the run's start had made 17 of 18 tasks fresh
    interpreters), and the driver keeps its value."""
    before = forkserver.fallbacks(shim)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)
    with forkserver.kfp_tasks_use(shim), forkserver.tasks_get_startup_env(shim) as reset:
        first = whoami(tag="before")
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "set-mid-run"))  # as the estimate's thread does
        later = whoami(tag="after")
    for task in (first, later):
        assert json.loads(open(task.outputs["out"].path).read())["torch_preloaded"]
    assert forkserver.fallbacks(shim) == before
    server_value = forkserver._STARTED_WITH[shim]["TORCHINDUCTOR_CACHE_DIR"]  # unset, or set by an earlier import
    assert reset == {"TORCHINDUCTOR_CACHE_DIR": (str(tmp_path / "set-mid-run"), server_value)}
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "set-mid-run")


def test_fallback_lines_name_each_reason_once_with_its_count():
    lines = forkserver.fallback_lines(["A differs", "B differs", "A differs"])
    assert len(lines) == 2 and lines[0].startswith("2 tasks ran in a fresh interpreter") and lines[0].endswith(": A differs")
    assert lines[1].startswith("1 task ran") and forkserver.fallback_lines([]) == []


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def sleeper(marker: str):
    import os
    import time

    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)


def test_sigterm_to_the_shim_reaches_the_task(tmp_path, shim):
    """kfp.local and `uft run`'s stop signal the process they started (the shim): it must reach the task."""
    import threading

    from uft.orchestrate.lifecycle import descendants
    from uft.services import pid_alive

    marker = tmp_path / "pid"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=False)
    with forkserver.kfp_tasks_use(shim):
        done = threading.Event()
        threading.Thread(target=lambda: (sleeper(marker=str(marker)), done.set()), daemon=True).start()
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        task = int(marker.read_text())
        shims = [p for p in descendants() if shim in open(f"/proc/{p}/cmdline").read().split("\0")]
        assert shims and task not in shims  # the task is the server's grandchild, not the shim
        os.kill(shims[0], signal.SIGTERM)
        assert done.wait(30), "kfp.local did not see the task end"
        deadline = time.monotonic() + 10
        while pid_alive(task) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(task)


def test_shim_falls_back_to_the_real_interpreter(tmp_path, shim):
    """No server at the socket: the shim execs the real interpreter (no CPU line); with the server,
    the same command is forked (a CPU line)."""
    cmd = [shim, "-m", "kfp.dsl.executor_main", "--help"]
    env = {**os.environ, "_KFP_RUNTIME": "true"}  # as the component's command sets it
    forked = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    bogus = {**env, forkserver.ENV_SOCKET: str(tmp_path / "no-server")}
    fresh = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=bogus)
    assert forked.returncode == 0 and "usage" in forked.stdout and forkserver.CPU_LINE in forked.stdout
    assert fresh.returncode == 0 and "usage" in fresh.stdout and forkserver.CPU_LINE not in fresh.stdout
    assert any(r.startswith("could not reach the fork server") for r in forkserver.fallbacks(shim))


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def echo_path(path: str, out: dsl.Output[dsl.Artifact]):
    with open(out.path, "w") as f:
        f.write(path)


@pytest.mark.parametrize("through_server", [True, False], ids=["fork-server", "fresh-interpreter"])
def test_a_task_argument_naming_python3_reaches_the_task_unchanged(tmp_path, shim, through_server):
    """kfp.local's replace_python_executable (kfp/local/subprocess_task_handler.py) rewrites
    ``python3`` in every element of the command but the component's code, its arguments included:
    a weights file under ``.venv/lib/python3.11/site-packages`` reached the step mangled."""
    arg = str(tmp_path / "lib" / "python3.11" / "site-packages" / "weights.pth")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)
    with forkserver.kfp_tasks_use(shim if through_server else None):
        task = echo_path(path=arg)
    assert open(task.outputs["out"].path).read() == arg


def test_waiting_for_a_server_that_died_returns_at_once():
    """The pre-run estimate waits for the server's preload: a server that exited never gets there,
    and the run must not sit out the whole timeout."""
    import time

    with forkserver.serving() as path:
        proc = forkserver._PROCESS[path]
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        assert forkserver.wait_ready(path, timeout=60) is False
        assert time.monotonic() - t0 < 5


def test_paused_tasks_stops_what_the_run_started_for_the_block_only():
    """The estimate's timed steps must not share the CPUs with the fork server's preload or the
    first tasks (timed beside them a step took 2.3× as long): paused_tasks stops every process of
    this session below us (a task here) for the block, and it goes on afterwards; a process in its
    own session (as the S3 server runs) is left alone."""
    import subprocess
    import sys
    import time

    from uft.orchestrate.lifecycle import paused_tasks

    def state(pid: int) -> str:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]

    task = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    service = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        with paused_tasks() as stopped:
            time.sleep(0.2)
            assert task.pid in stopped and state(task.pid) == "T"
            assert service.pid not in stopped and state(service.pid) != "T"
        time.sleep(0.2)
        assert state(task.pid) != "T"
    finally:
        for p in (task, service):
            p.kill()
            p.wait()


def test_a_forked_task_finds_mlflows_package_map_already_built(tmp_path, shim):
    """The server builds MLflow's package → module map once (forkserver.WARM), after its preload:
    a forked task that logs a model (promote) does not rebuild it (0.3-1 s each time)."""
    record, _ = _run(tmp_path, shim, whoami)
    assert record["torch_preloaded"] and record["mlflow_packages_mapped"]
    assert record["s3_models_parsed"]  # and botocore's S3 model (each S3 client parsed it: 0.1 s)


def test_a_staged_task_does_not_wait_for_the_preloads_long_imports(tmp_path, monkeypatch):
    """A cached rerun's fingerprint and finalize tasks waited 0.6-1.7 s each for one of the
    server's long imports (MLflow's, torch's) to end: a task of a stage's function is served by the
    stage server, forked once the preload got past the stage, while the server goes on importing.
    Here the preload's next module takes 60 s to import; the staged task is done long before, in a
    fork of the stage server, without what the stage lacks; the server stops its stage servers."""
    (tmp_path / "slow_to_import.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the server's and the task's start-up environment
    t0 = time.monotonic()
    with forkserver.serving(preload=("kfp.dsl.executor_main", "slow_to_import", "torch"),
                            stages=(("kfp.dsl.executor_main", ("whoami",)),)) as shim:
        main = forkserver._PROCESS[shim].pid
        stage = os.path.join(os.path.dirname(shim), forkserver.stage_socket(0))
        while not os.path.exists(stage) and time.monotonic() - t0 < 30:
            time.sleep(0.05)
        rec, out = _run(tmp_path, shim, whoami)
        took = time.monotonic() - t0
        stage_server = rec["server"]
        assert forkserver.fallbacks(shim) == []
    assert "hello from t1" in out and took < 30, (took, out)  # not after the 60 s import
    assert stage_server != main and not rec["torch_preloaded"]
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{stage_server}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{stage_server}")  # stopped with the server


def test_a_task_of_no_stage_goes_to_the_server(tmp_path, shim):
    """Only the stages' functions go to a stage server: any other task is a fork of the fully
    loaded server (torch preloaded), as before."""
    rec, _ = _run(tmp_path, shim, whoami)
    assert rec["server"] == forkserver._PROCESS[shim].pid and rec["torch_preloaded"]


def test_the_stages_functions_import_nothing_their_stage_lacks():
    """What makes routing a task to a stage server pay: the component's own imports (run in a
    fresh interpreter after the stage's part of the preload) bring in no module of the rest of the
    preload (torch, sklearn, matplotlib): the task would import it itself, for seconds."""
    import ast
    import importlib
    import inspect
    import sys

    for i, (after, functions) in enumerate(forkserver.STAGES):
        loaded = forkserver.PRELOAD[:forkserver.PRELOAD.index(after) + 1]
        rest = {m.split(".")[0] for m in forkserver.PRELOAD[len(loaded):]} - {m.split(".")[0] for m in loaded}
        for fn in functions:
            component = getattr(importlib.import_module(f"components.{fn}"), fn)
            tree = ast.parse(inspect.getsource(component.python_func))
            imports = [f"import {a.name}" for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names] + \
                      [f"import {n.module}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
            code = "\n".join(["import sys", *(f"import {m}" for m in loaded), *imports,
                              f"print(sorted(m for m in {sorted(rest)!r} if m in sys.modules))"])
            got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            assert got.strip() == "[]", (i, fn, got)


def test_stopping_the_server_mid_import_is_prompt(tmp_path, monkeypatch):
    """A cached rerun ends while the server is still importing (torch's import takes seconds):
    the run's exit does not wait for that import, and the stage servers go with the server."""
    (tmp_path / "slow_to_import.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with forkserver.serving(preload=("kfp.dsl.executor_main", "slow_to_import"),
                            stages=(("kfp.dsl.executor_main", ("whoami",)),)) as shim:
        stage = os.path.join(os.path.dirname(shim), forkserver.stage_socket(0))
        deadline = time.monotonic() + 30
        while not os.path.exists(stage) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # inside the 60 s import now
        server = forkserver._PROCESS[shim]
        t0 = time.monotonic()
    took = time.monotonic() - t0
    assert server.poll() is not None and took < 2, took
