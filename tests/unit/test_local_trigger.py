"""`uft trigger --local`'s bookkeeping with a stand-in for the `uft run` child (the real loop is
played in tests/pipeline/test_trigger_loop.py): a run only when the directory's content changed,
a failed run retried, the decision read from `uft run`'s output."""

from __future__ import annotations

import subprocess

import pytest

from uft.errors import UftError
from uft.orchestrate.local_trigger import promotion_from_output, trigger_local


def test_local_trigger_runs_on_change_and_retries_failures(tmp_path):
    target = tmp_path / "target" / "a"
    target.mkdir(parents=True)
    (target / "1.png").write_bytes(b"one")
    calls: list[list[str]] = []
    outcome = {"rc": 0, "out": "…\nPromotion: champion — uft-encoder version 1: better: gate score …\n"}

    def runner(cmd):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, outcome["rc"], outcome["out"], "")

    kw = dict(source="mnist", params={"finetune_steps": "5"}, state=tmp_path / "state", runner=runner)
    first = trigger_local(str(tmp_path / "target"), **kw)
    assert first["action"] == "ran" and first["promoted"] and first["promotion"].startswith("champion — uft-encoder")
    assert calls[0][3:] == ["run", "--source", "mnist", "--target", str(tmp_path / "target"), "--run-id",
                            first["run_id"], "--experiment", "uft", "-p", "finetune_steps=5"]
    same = trigger_local(str(tmp_path / "target"), **kw)
    assert same["action"] == "none" and len(calls) == 1 and same["promotion"] == first["promotion"]

    (target / "2.png").write_bytes(b"two")  # more target images: a new run
    outcome.update(rc=1, out="")
    with pytest.raises(UftError, match="failed"):
        trigger_local(str(tmp_path / "target"), **kw)
    outcome.update(rc=0, out="Promotion: challenger — uft-encoder version 2: the target is another domain …")
    retried = trigger_local(str(tmp_path / "target"), **kw)  # same content, its run failed: run again
    assert retried["action"] == "retried" and len(calls) == 3 and retried["promoted"] is False
    with pytest.raises(UftError, match="directory"):
        trigger_local(str(tmp_path / "nope"), **kw)
    assert promotion_from_output("no verdict here") is None
