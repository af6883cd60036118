"""A pytest plugin for tests/unit/test_guarantee_map.py: run with ``--collect-only -p tests.ci_collect``
and ``UFT_CI_COLLECT_OUT=<file>``, it writes what that collection would do to each test as JSON.

For every collected test: whether the run's ``-m`` expression kept it (``selected``), its markers,
the reason pytest's own skip evaluation gives for its ``skip``/``skipif`` marks in this environment
(``skip``; the same function the runner calls before a test), an ``xfail`` mark that applies, and
every call that can skip at run time (``pytest.skip``/``importorskip``/``pytest.xfail``) in the
test's function or in any fixture it uses that is defined under ``tests/`` (``runtime_skips``).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
from pathlib import Path

import pytest

_RUNTIME_SKIP = re.compile(r"\bpytest\.(?:skip|xfail)\(|\bimportorskip\(")
_ROOT = Path(__file__).resolve().parent


def _runtime_skips(item) -> list[str]:
    """``"<function> (<file>:<line>): <source line>"`` for each skip call the test can reach
    directly: its own function and every fixture in its closure not defined by an installed package."""
    funcs = [("test", getattr(item, "function", None))]
    info = getattr(item, "_fixtureinfo", None)
    for name, defs in (info.name2fixturedefs.items() if info else ()):
        funcs += [(f"fixture {name}", d.func) for d in defs]
    found = []
    for what, fn in funcs:
        fn = inspect.unwrap(fn) if fn is not None else None
        try:
            path = Path(inspect.getsourcefile(fn)).resolve()
            lines, start = inspect.getsourcelines(fn)
        except (TypeError, OSError):
            continue
        if "site-packages" in path.parts or Path(sys.base_prefix).resolve() in path.parents:
            continue  # pytest's own fixtures (tmp_path, monkeypatch, …) and plugins' do not skip
        shown = path.relative_to(_ROOT.parent) if _ROOT.parent in path.parents else path
        for i, line in enumerate(lines):
            if _RUNTIME_SKIP.search(line) and not line.lstrip().startswith("#"):
                found.append(f"{what} ({shown}:{start + i}): {line.strip()}")
    return found


class _Recorder:
    def __init__(self) -> None:
        self.deselected: dict[str, list[str]] = {}

    @pytest.hookimpl
    def pytest_deselected(self, items) -> None:
        self.deselected.update({i.nodeid: sorted({m.name for m in i.iter_markers()}) for i in items})

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session) -> None:
        from _pytest.skipping import evaluate_skip_marks, evaluate_xfail_marks

        out = {}
        for item in session.items:
            skip = evaluate_skip_marks(item)
            xfail = evaluate_xfail_marks(item)
            out[item.nodeid] = {"selected": True, "markers": sorted({m.name for m in item.iter_markers()}),
                                "skip": skip.reason if skip else None, "xfail": xfail.reason if xfail else None,
                                "runtime_skips": _runtime_skips(item)}
        for nodeid, markers in self.deselected.items():
            out[nodeid] = {"selected": False, "markers": markers}
        Path(os.environ["UFT_CI_COLLECT_OUT"]).write_text(json.dumps(out, indent=1))


def pytest_configure(config) -> None:
    if os.environ.get("UFT_CI_COLLECT_OUT"):
        config.pluginmanager.register(_Recorder(), "uft-ci-collect")
