"""The package's shape: imports go one way, and no file names a path of the machine it was made on."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """uft module → the uft modules it imports anywhere in its body (lazy imports included: a
    function-level import is still a dependency, only deferred)."""
    files = {_module_name(p): p for p in (SRC / "uft").rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*pkg, base] if base else pkg)
                names = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            graph[mod] |= {r for n in names if (r := resolve(n)) and r != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            comp.append(v)
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_in_uft():
    graph = import_graph()
    assert len(graph) > 50 and graph["uft.steps"], "the graph reader found no modules or imports"
    assert cycles(graph) == [], "import circles (break them by moving the shared names lower)"


def test_the_circle_check_finds_a_circle():
    assert layers({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == {0: ["b"], 1: ["a"], 2: ["c"]}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_low_layers_import_nothing_above_them():
    graph = import_graph()
    assert graph["uft.choices"] == set()
    assert graph["uft.store"] <= {"uft.errors"}
    assert "uft.config" not in graph["uft.store"] | graph["uft.data.ingest"]
    assert not {m for m in graph["uft.config"] if m.startswith(("uft.transfer", "uft.data", "uft.steps"))}


#: Absolute paths of a development machine (working trees, home and temporary directories). The
#: Dockerfiles are exempt: their /tmp and /home/uft are paths inside the image being built; so are
#: paths under a root file system being assembled ("$root"/tmp in docker/build-base.sh).
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|root|tmp)/|(?<![\w.~-])/home/(?!uft\b)")


def test_no_machine_paths_or_build_traces_in_committed_files():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in files:
        if name.startswith("docker/Dockerfile") or name == "tests/unit/test_layout.py":
            continue
        try:
            text = (ROOT / name).read_text()
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line.replace('"$root"/', "")) or re.search(r"\bthe lead\b", line, re.I):
                found.append(f"{name}:{n}: {line.strip()[:100]}")
    assert found == []


def _readme_layout() -> tuple[list[str], list[str]]:
    """(top-level entries, entries indented under src/uft/) of the README's layout block."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    lines = [line for line in block.splitlines() if line.strip()]
    top = [line.split()[0] for line in lines if not line.startswith(" ")]
    nested = [line.split()[0] for line in lines if line.startswith("  ")]
    return top, nested


def test_the_readme_layout_matches_the_tree():
    top, nested = _readme_layout()
    listed_uft = {e.rstrip("/") for e in nested}
    actual_uft = {p.stem if p.suffix == ".py" else p.name for p in (SRC / "uft").iterdir()
                  if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").exists())}
    listed_uft = {e.removesuffix(".py") for e in listed_uft}
    assert listed_uft == actual_uft, (f"in src/uft but not in the README's layout: {sorted(actual_uft - listed_uft)}; "
                                      f"listed but missing: {sorted(listed_uft - actual_uft)}")
    assert "src/uft/" in top
    for entry in top:
        assert (ROOT / entry).exists(), f"README's layout lists {entry}, which is not in the tree"


def layers(graph: dict[str, set[str]]) -> dict[int, list[str]]:
    """Modules by layer of an acyclic graph: layer 0 imports no uft module, layer n imports only
    modules below n."""
    depth: dict[str, int] = {}

    def of(m: str) -> int:
        if m not in depth:
            depth[m] = 1 + max((of(d) for d in graph[m]), default=-1)
        return depth[m]

    out: dict[int, list[str]] = {}
    for m in sorted(graph):
        out.setdefault(of(m), []).append(m)
    return dict(sorted(out.items()))


if __name__ == "__main__":  # `python tests/unit/test_layout.py`: the import graph of src/uft, by layer
    g = import_graph()
    if found := cycles(g):
        print("import circles:", *(" → ".join(c) for c in found), sep="\n  ")
    else:
        for n, mods in layers(g).items():
            print(f"layer {n}: {', '.join(m.removeprefix('uft.') for m in mods)}")
