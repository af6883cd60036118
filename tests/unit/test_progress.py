"""Progress lines (uft.progress) and how the local runner turns task logs into live status events."""

from __future__ import annotations

import io
import re

import pytest

from uft.errors import UftError
from uft.progress import Progress, format_line, parse


def test_line_roundtrip():
    line = format_line("pretrain", 40, 200, {"loss": 4.10234, "eta_s": 12})
    assert line == "uft-progress pretrain 40/200 loss=4.102 eta_s=12"
    ev = parse("12:00:01 - INFO - " + line)
    assert (ev.label, ev.done, ev.total, ev.info) == ("pretrain", 40, 200, {"loss": "4.102", "eta_s": "12"})
    assert ev.describe() == "pretrain 40/200 · loss 4.102 · eta_s 12"
    assert parse("progress 4/5") is None and parse("uft-progress x 4/") is None
    assert parse(format_line("reading /a b/c", 1, 2, {})).label == "reading_/a_b/c"  # labels never hold spaces


def test_lines_mode_prints_about_ten_lines_and_the_end():
    out = io.StringIO()
    with Progress("ssl", 95, mode="lines", stream=out) as p:
        for i in range(1, 96):
            p.update(i, loss=1.0 / i)
    events = [parse(line) for line in out.getvalue().splitlines()]
    assert all(events) and [e.done for e in events] == [9 * k for k in range(1, 11)] + [95]
    assert "eta_s" in events[0].info and "eta_s" not in events[-1].info  # rate counted from update 1


def test_resumed_loop_starts_its_lines_where_it_resumes():
    out = io.StringIO()
    with Progress("ssl", 100, mode="lines", stream=out) as p:
        for i in (60, 70, 80, 90, 100):
            p.update(i)
    assert [parse(line).done for line in out.getvalue().splitlines()] == [60, 70, 80, 90, 100]


def test_off_and_env_and_bad_mode(monkeypatch):
    out = io.StringIO()
    with Progress("x", 10, mode="off", stream=out) as p:
        p.update(10)
    assert out.getvalue() == ""
    monkeypatch.setenv("UFT_PROGRESS", "off")
    with Progress("x", 10, stream=out) as p:
        p.update(10)
    assert out.getvalue() == ""
    monkeypatch.setenv("UFT_PROGRESS", "loud")
    with pytest.raises(UftError, match="UFT_PROGRESS.*bar, lines or off"):
        Progress("x", 10, stream=out)


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, as stderr is under `uft run` in a shell: rich draws there."""

    def isatty(self) -> bool:
        return True


def test_bar_mode_renders_without_error(monkeypatch):
    """On a terminal the default mode is the bar: it shows the label, the count done and the info
    (loss), draws no parseable lines, and is erased at the end (transient)."""
    monkeypatch.delenv("UFT_PROGRESS", raising=False)  # importing bench.common sets it for the process
    out = _Terminal()
    with Progress("ssl", 5, stream=out) as p:  # no mode given: a terminal picks the bar
        assert p.mode == "bar"
        for i in range(1, 6):
            p.update(i, loss=0.5)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # drop the terminal's control codes
    final = text.split("\r")[-2]  # the last frame drawn before the bar is erased
    assert "ssl" in final and "5/5" in final and "loss 0.5" in final, repr(text)
    assert "uft-progress" not in text
    assert out.getvalue().endswith("\x1b[2K")  # transient: the last write erases the bar's line


def test_runner_tap_reports_task_start_progress_and_end():
    from uft.orchestrate.local import _ErrorTap

    events: list[tuple[str, str]] = []
    tap = _ErrorTap(io.StringIO(), quiet=True, on_event=lambda t, s: events.append((t, s)))
    tap.write("10:00:00.1 - INFO - Executing task \x1b[96m'pretrain'\x1b[0m\n")
    tap.write("uft-progress pretrain 30/300 loss=5.1\nsomething else\n")
    tap.write("10:00:09.2 - INFO - Task \x1b[96m'pretrain'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n")
    tap.write("uft.errors.UftError: the target dataset is empty\n")
    assert events == [("pretrain", "started"), ("pretrain", "pretrain 30/300 · loss 5.1"), ("pretrain", "success")]
    assert tap.last_error == "the target dataset is empty" and tap.current_task == "pretrain"
