"""Same input → same published dataset: manifest hashes of a few ingests under this tree (1 and 2
decode workers) and, with ``--baseline``, under another checkout (e.g. main before parallel ingest).

    python -m bench.ingest_identity --baseline <baseline checkout>/src

Cases: bundled MNIST at 16 px (resized, framed), optdigits with ``limit``, and a generated
ImageFolder (3 classes × 700 RGB JPEGs of varied sizes, plus a corrupt file, a non-image, a byte
duplicate and a grey PNG) at 16 px RGB and at 12 px grey with ``content_box`` and ``limit``.
Every run is a fresh interpreter writing to its own ``file://`` store.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = [("mnist", 16, 1, 0, "auto"), ("optdigits", 8, 1, 100, "auto"),
         ("TREE", 16, 3, 0, "keep"), ("TREE", 12, 1, 500, "content_box")]


def make_tree(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    if (root / ".complete").exists():
        return root
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(700):
            small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
            small.resize((int(rng.integers(20, 40)), 32), Image.BILINEAR).save(root / f"c{c}" / f"{i:04d}.jpg", quality=90)
    (root / "c1" / "bad.png").write_bytes(b"junk")
    (root / "c2" / "note.txt").write_text("x")
    shutil.copy(root / "c0" / "0003.jpg", root / "c2" / "dup.jpg")
    Image.new("L", (9, 9), 7).save(root / "c0" / "grey.png")
    (root / ".complete").touch()
    return root


def child(tree: str) -> list[str]:
    """Ingest every case into a temporary store → manifest sha256 per case (runs in a fresh process)."""
    os.environ["UFT_PROGRESS"] = "off"
    from uft.data.ingest import ingest
    from uft.data.sources import load_source
    from uft.store import LocalStore, manifest_sha

    out = []
    with tempfile.TemporaryDirectory() as store:
        for spec, size, ch, limit, framing in CASES:
            spec = tree if spec == "TREE" else spec
            raw = load_source(spec, image_size=size, channels=ch, framing=framing)
            uri = ingest(raw, LocalStore(Path(store)), name=spec, image_size=size, channels=ch, limit=limit, seed=3)
            out.append(manifest_sha(uri))
    return out


def run_in(src: Path, tree: Path, workers: int) -> list[str]:
    env = {**os.environ, "UFT_INGEST_WORKERS": str(workers),
           "PYTHONPATH": os.pathsep.join([str(src), str(Path(__file__).parents[1])])}
    code = f"import json, bench.ingest_identity as b; print(json.dumps(b.child({str(tree)!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"ingest under {src} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(prog="python -m bench.ingest_identity", description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", type=Path, help="another checkout's src/ to compare with")
    ap.add_argument("--tree", type=Path, default=Path(tempfile.gettempdir()) / "uft-ingest-identity-tree")
    args = ap.parse_args(argv)
    from bench.common import table

    tree = make_tree(args.tree)
    here = Path(__file__).parents[1] / "src"
    cols = {"this tree, 1 worker": run_in(here, tree, 1), "this tree, 2 workers": run_in(here, tree, 2)}
    if args.baseline:
        cols["baseline checkout"] = run_in(args.baseline, tree, 1)
    names = [f"{'ImageFolder' if s == 'TREE' else s} {z}px×{c} limit={lim} framing={f}" for s, z, c, lim, f in CASES]
    rows = [[n, *(v[i][:16] for v in cols.values()), "yes" if len({v[i] for v in cols.values()}) == 1 else "NO"]
            for i, n in enumerate(names)]
    report = "## Ingest identity (manifest sha256, first 16 hex)\n\n- ImageFolder: generated in a temporary directory\n\n" + \
        table(["case", *cols, "all equal"], rows)
    print(report)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
