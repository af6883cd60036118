"""The guarantee map (docs/guarantees.md, "Guarantee map") names, for every guarantee of README.md and
docs/guarantees.md, the tests that prove it; CI must run each of them. This test fails when:

- a guarantee of the README or a section of docs/guarantees.md has no row, or a test the prose of
  docs/guarantees.md cites is not in the map;
- a mapped node id (or file) collects nothing: renamed, deleted, or failing to import;
- CI's selection drops it: `make test` runs ``-m "not slow"``, so a test marked ``slow`` is
  deselected (found by collecting with CI's own ``-m`` and recording pytest's ``deselected`` hook);
- it would skip under ``CI=true``: its ``skip``/``skipif`` marks are evaluated by pytest's own
  evaluator (``_pytest.skipping.evaluate_skip_marks``, what the runner calls before each test) in a
  collection run with ``CI=true`` and the environment of the make target that runs it; marks added
  at collection time (tests/images/conftest.py) count. An ``xfail`` that applies fails it too;
- it can skip at run time: a ``pytest.skip``/``importorskip``/``pytest.xfail`` call in the test's
  function or in a fixture of its closure defined in this repository (source scan), unless listed in
  ``RUNTIME_SKIPS_THAT_CANNOT_FIRE`` with a check, run here, that the condition cannot hold on this
  machine.

The collection runs in a subprocess (``--collect-only -p tests.ci_collect``): nothing is executed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "guarantees.md"
README = ROOT / "README.md"

#: The pytest selections CI runs (.ci/run → make targets; test_ci_runs_these_selections keeps them
#: equal to the Makefile): target → (paths, extra pytest args, extra environment).
CI_RUNS = {
    "make test": (["tests"], ["-m", "not slow"], {}),
    "make test-images": (["tests/images"], [], {"UFT_TEST_IMAGE": "uft:guarantee-map"}),
}


def _glibc_at_least(major: int, minor: int) -> bool:
    name, _, version = os.confstr("CS_GNU_LIBC_VERSION").partition(" ") if hasattr(os, "confstr") else ("", "", "")
    return name == "glibc" and tuple(int(v) for v in version.split(".")[:2]) >= (major, minor)


#: A runtime skip allowed in a mapped test's closure: (file, the skip's source line) → a check that
#: it cannot fire on this machine (CI's), run by this test.
RUNTIME_SKIPS_THAT_CANNOT_FIRE = {
    ("tests/unit/test_heap.py", 'pytest.skip("not glibc >= 2.33: keep_heap_flat does nothing there")'):
        lambda: _glibc_at_least(2, 33),
}


def _ci_run_of(nodeid: str) -> str:
    return "make test-images" if nodeid.startswith("tests/images/") else "make test"


def guarantee_map() -> list[tuple[str, str, list[str]]]:
    """Rows of the map: (guarantee, README name or "", node ids or test files)."""
    text = DOC.read_text()
    section = text.split("## Guarantee map", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not line.startswith("|") or set(cells[0]) <= {"-", " "} or cells[0] == "guarantee":
            continue
        rows.append((cells[0], cells[1], re.findall(r"`(tests/[^`]+)`", cells[2])))
    return rows


def _cited_in_prose() -> set[str]:
    """Tests the prose of docs/guarantees.md cites, as node ids or files: ``test_x.py::name`` (a bare
    file name is found under tests/), ``::name`` continuing the last file, or a whole file."""
    prose = DOC.read_text().split("## Guarantee map", 1)[0]
    cited, last = set(), None
    for ref in re.findall(r"`([^`]*test_[^`]*)`", prose):
        m = re.fullmatch(r"((?:tests/[\w/]+/)?test_\w+\.py)?(?:::(\w+))?", ref.strip())
        if not m or not (m.group(1) or m.group(2)):
            continue
        if m.group(1):
            path = m.group(1)
            if "/" not in path:
                (found,) = [p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob(path)]
                path = found
            last = path
        assert last, f"{ref!r} continues no file"
        cited.add(f"{last}::{m.group(2)}" if m.group(2) else last)
    return cited


def _collect(run: str, files: list[str], tmp_path: Path) -> dict[str, dict]:
    paths, args, env = CI_RUNS[run]
    out = tmp_path / f"{run.replace(' ', '-')}.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "tests.ci_collect",
                           "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT),
                           *args, *files],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CI": "true", **env, "UFT_CI_COLLECT_OUT": str(out)})
    assert proc.returncode == 0 and out.exists(), f"collecting {files} failed:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"
    return json.loads(out.read_text())


def test_every_guarantee_has_a_row_and_every_cited_test_is_mapped():
    rows = guarantee_map()
    assert rows, "docs/guarantees.md has no 'Guarantee map' table"
    readme = README.read_text().split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    readme_names = set(re.findall(r"^- \*\*([^*:]+):\*\*", readme, re.M))
    assert readme_names, "README's Guarantees list has no bold names"
    assert readme_names <= {r[1] for r in rows}, f"README guarantees without a row: {readme_names - {r[1] for r in rows}}"
    sections = re.findall(r"^\*\*([^*]+)\*\*$", DOC.read_text().split("## Guarantee map", 1)[0], re.M)
    assert sections
    for s in sections:
        assert any(g.startswith(s) for g, _, _ in rows), f"section {s!r} of docs/guarantees.md has no row in the map"
    mapped = {t for *_, ids in rows for t in ids}
    assert all(ids for *_, ids in rows), [g for g, _, ids in rows if not ids]
    cited = _cited_in_prose() - {Path(__file__).relative_to(ROOT).as_posix()}
    unmapped = {c for c in cited if c not in mapped and c.split("::")[0] not in mapped}  # or its whole file
    assert not unmapped, f"cited in docs/guarantees.md but not in the map: {sorted(unmapped)}"


def test_ci_runs_these_selections():
    """CI_RUNS is what .ci/run really runs: the make targets, with these paths and ``-m``."""
    ci = (ROOT / ".ci" / "run").read_text()
    make = (ROOT / "Makefile").read_text()
    for run in CI_RUNS:
        assert re.search(rf"^{re.escape(run)}\b", ci, re.M), f".ci/run does not run `{run}`"
    assert re.search(r'^test: .*\n\t\$\(BIN\)/python -m pytest -m "not slow" -q \$\(PYTEST_ARGS\)$', make, re.M)
    assert re.search(r"^test-images: .*(\n\t.*)*?\n\t.*\$\(BIN\)/python -m pytest tests/images -q \$\(PYTEST_ARGS\)$",
                     make, re.M)


def test_every_mapped_test_runs_in_ci(tmp_path):
    mapped = sorted({t for *_, ids in guarantee_map() for t in ids})
    problems = []
    for run in CI_RUNS:
        wanted = [t for t in mapped if _ci_run_of(t) == run]
        if not wanted:
            continue
        items = _collect(run, sorted({t.split("::")[0] for t in wanted}), tmp_path)
        for ref in wanted:
            # a node id matches itself and its parametrizations; a file, every test in it
            hits = {n: i for n, i in items.items()
                    if n == ref or n.startswith(ref + "[") or ("::" not in ref and n.startswith(ref + "::"))}
            if not hits:
                problems.append(f"{ref}: collects nothing (missing, renamed, or failing to import)")
            for n, i in hits.items():
                if not i["selected"]:
                    problems.append(f"{n}: deselected by `{run}` (markers {i['markers']}: slow tests do not run in CI)")
                    continue
                if i["skip"]:
                    problems.append(f"{n}: skips under CI=true in `{run}`: {i['skip']}")
                if i["xfail"]:
                    problems.append(f"{n}: marked xfail under CI=true: {i['xfail']}")
                for where in i["runtime_skips"]:
                    file, line = re.match(r".*\((\S+):\d+\): (.*)$", where).groups()
                    allowed = RUNTIME_SKIPS_THAT_CANNOT_FIRE.get((file, line))
                    if allowed is None or not allowed():
                        problems.append(f"{n}: can skip at run time: {where}")
    assert not problems, "\n".join(problems)


def test_the_checks_see_slow_skipped_and_missing_tests(tmp_path):
    """Positive control: the same collection flags a slow test, a skipif that holds under CI=true, a
    runtime skip in a fixture, and a missing node id."""
    probe = tmp_path / "probe" / "test_probe.py"
    probe.parent.mkdir()
    probe.write_text(
        "import os, pytest\n"
        "@pytest.fixture\ndef needs_data():\n    pytest.skip('no data')\n"
        "@pytest.mark.slow\ndef test_slow():\n    pass\n"
        "@pytest.mark.skipif(os.environ.get('CI') == 'true', reason='not in CI')\ndef test_not_in_ci():\n    pass\n"
        "def test_data(needs_data):\n    pass\n"
        "def test_fine():\n    pass\n")
    items = {n.rsplit("::", 1)[1]: i for n, i in _collect("make test", [str(probe)], tmp_path).items()}
    assert items["test_slow"] == {"selected": False, "markers": ["slow"]}
    assert items["test_not_in_ci"]["skip"] == "not in CI"
    assert items["test_data"]["runtime_skips"] == [f"fixture needs_data ({probe.resolve()}:4): pytest.skip('no data')"]
    assert items["test_fine"]["selected"] and not items["test_fine"]["skip"] and not items["test_fine"]["runtime_skips"]
    assert "test_missing" not in items
