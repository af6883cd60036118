"""Which defaults hold across datasets: colour, image size, training budget and colour views varied
one at a time on four source/target pairs, ≥ 3 seeds, and the rule chosen leave-one-dataset-out.

    nice -n 10 .venv/bin/python -m bench.defaults_rule [--seeds 0,1,2] [--pretrain-steps 40]
        [--finetune-steps 20] [--batch 64] [--threads 1] [--work build/defaults_rule]

Pairs (:mod:`bench.defaults_pairs`): digits (MNIST → optdigits), clothing (Fashion-MNIST → "camera
B"), photographs (scikit-image colour pair), sprites (Dungeon Crawl tiles, RGBA, transparent).
Every cell runs what the pipeline runs, scaled down: SimCLR pretraining of the tiny convnet on the
source, SimCLR finetuning on the target's train half (continuing the SSL head, no replay), then
k-NN (k=20), a 5-label-per-class probe (5 draws) and a full linear probe on the target's test half,
for the base and the finetuned encoder. Images are decoded by uft's own ImageFolder decoder (alpha
composited on black) at each cell's size and channels.

Cells (``budget`` multiplies both step counts): ``16g`` = the old fixed defaults (16 px grey);
``Sg`` = the inferred size, grey; ``Sc`` = the inferred size, colour (what `uft run` inferred so
far); ``16c`` = colour at 16 px; ``×2`` = twice the steps; ``+cv`` = colour views (saturation
jitter 0.4, grey view p=0.2); ``bg128`` = alpha composited on mid-grey instead of black.

Then each candidate rule (a map from a dataset's profile to a cell) is scored leave-one-dataset-out:
the rule with the best mean gain over the old defaults on the other three datasets is scored on the
held-out one. Prints markdown; writes bench/results/defaults_rule.{md,json}. Cells are cached in
``--work``/cells.json, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.common import RESULTS

PER_CLASS = {"digits": 80, "clothing": 80, "photographs": 80, "sprites": 160}


@dataclass(frozen=True)
class Cell:
    size: str  # "16" or "S" (the size `uft run` infers for the pair)
    colour: bool
    budget: int = 1
    views: bool = False  # colour views in the SSL augmentation
    bg: int = 0  # grey level alpha is composited on

    @property
    def name(self) -> str:
        return (f"{self.size}{'c' if self.colour else 'g'}" + (f" ×{self.budget}" if self.budget != 1 else "")
                + (" +cv" if self.views else "") + (f" bg{self.bg}" if self.bg else ""))


GREY_CELLS = [Cell("16", False), Cell("S", False), Cell("S", False, 2)]
COLOUR_CELLS = [Cell("16", False), Cell("S", False), Cell("16", True), Cell("S", True), Cell("S", True, 2),
                Cell("S", True, views=True), Cell("S", True, 2, views=True)]
EXTRA = {"sprites": [Cell("16", True, bg=128)]}

# Candidate rules: dataset profile (is it colour?) → cell. "old" is the baseline every rule is scored against.
RULES = {
    "old: 16 px grey": lambda c: Cell("16", False),
    "inferred size, grey": lambda c: Cell("S", False),
    "inferred size + colour (so far)": lambda c: Cell("S", c),
    "inferred size + colour, ×2 steps": lambda c: Cell("S", c, 2),
    "inferred size + colour + colour views": lambda c: Cell("S", c, views=c),
    "inferred size + colour + colour views, ×2 steps (uft run now)": lambda c: Cell("S", c, 2, views=c),
    "16 px + colour": lambda c: Cell("16", c),
}


def _inferred(src: Path, tgt: Path) -> tuple[int, bool]:
    """What `uft run` infers on this CPU machine: (image_size, colour)."""
    from uft.data.profile import profile_dataset
    from uft.defaults import infer_defaults

    choice = infer_defaults(profile_dataset(str(src)), profile_dataset(str(tgt)), explicit={},
                            current={"image_size": 16, "channels": 1}, accelerator=False)
    return int(choice.values["image_size"]), choice.values["channels"] == 3


def _load(root: Path, size: int, channels: int, bg: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageFolder → uint8 ``(N, C, size, size)`` and labels, decoded as ingest decodes."""
    from bench.defaults_pairs import composite
    from uft.data.imagefolder import decode_image

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    xs, ys = [], []
    for y, c in enumerate(classes):
        for f in sorted((root / c).glob("*.png")):
            data = f.read_bytes()
            if bg:
                data = composite(data, bg)
            xs.append(decode_image(data, image_size=size, channels=channels)[0])
            ys.append(y)
    return torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous(), torch.tensor(ys)


def _evaluate(enc, tr, te) -> dict[str, float]:
    from uft.evaluate.features import extract_features
    from uft.evaluate.knn import knn_accuracy
    from uft.evaluate.linear import few_label_probe, linear_probe_accuracy

    ftr, fte = extract_features(enc, tr[0].float() / 255), extract_features(enc, te[0].float() / 255)
    n_cls = int(tr[1].max()) + 1
    m5, s5 = few_label_probe(ftr, tr[1], fte, te[1], 5, draws=5, seed=0)
    return {"knn": knn_accuracy(ftr, tr[1], fte, te[1], n_cls, k=20), "probe5": m5, "probe5_std": s5,
            "full": linear_probe_accuracy(ftr.numpy(), tr[1].numpy(), fte.numpy(), te[1].numpy())}


def run_cell(data, cell: Cell, seed: int, args) -> dict:
    """Pretrain on the source, finetune on the target's train half → base/finetuned metrics."""
    from uft.data.augment import COLOUR_VIEWS, AugmentConfig
    from uft.models.encoders import build_encoder
    from uft.ssl.base import build_method
    from uft.ssl.train import TrainConfig, train_ssl

    src, tr, te = data
    aug = AugmentConfig(**(COLOUR_VIEWS if cell.views else {}))
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    enc = build_encoder("tiny", in_channels=src.shape[1], width=32)
    torch.manual_seed(seed)
    method = build_method("simclr", enc)
    train_ssl(method, src, TrainConfig(steps=args.pretrain_steps * cell.budget, batch_size=args.batch, seed=seed, augment=aug))
    pre_s = time.perf_counter() - t0
    base = _evaluate(method.encoder.eval(), tr, te)
    t1 = time.perf_counter()
    train_ssl(method, tr[0], TrainConfig(steps=args.finetune_steps * cell.budget, batch_size=args.batch, seed=seed + 1000,
                                         augment=aug))
    fin_s = time.perf_counter() - t1
    fine = _evaluate(method.encoder.eval(), tr, te)
    return {"base": base, "finetuned": fine, "pretrain_s": pre_s, "finetune_s": fin_s}


def _split(x: torch.Tensor, y: torch.Tensor) -> tuple[tuple, tuple]:
    """Target → (train, test) halves, stratified, the same for every cell and seed."""
    g = torch.Generator().manual_seed(0)
    tr, te = [], []
    for c in y.unique():
        idx = torch.nonzero(y == c).squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        tr.append(idx[: len(idx) // 2])
        te.append(idx[len(idx) // 2:])
    tr, te = torch.cat(tr), torch.cat(te)
    return (x[tr], y[tr]), (x[te], y[te])


def _score(m: dict) -> float:
    """One number per run: the mean of target k-NN and 5-label probe accuracy (finetuned encoder)."""
    return (m["finetuned"]["knn"] + m["finetuned"]["probe5"]) / 2


def _cost(cell: Cell, size: int) -> float:
    """Relative training cost of a cell: input values × steps (16×16×1 at ×1 = 1)."""
    s = 16 if cell.size == "16" else size
    return (s / 16) ** 2 * (3 if cell.colour else 1) * cell.budget


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--pretrain-steps", type=int, default=40)
    ap.add_argument("--finetune-steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="build/defaults_rule")
    ap.add_argument("--pairs", default="digits,clothing,photographs,sprites")
    ap.add_argument("--no-estimate", action="store_true", help="skip timing the shapes before the run")
    ap.add_argument("--report-only", action="store_true", help="tabulate the cached cells only (a run cut short)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from bench.defaults_pairs import LICENCES, build_all

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    pairs = args.pairs.split(",")
    roots = build_all(work / "pairs", PER_CLASS, pairs=pairs)
    seeds = [int(s) for s in args.seeds.split(",")]
    inferred = {p: _inferred(*roots[p]) for p in pairs}
    # First the cells every comparison needs (old, inferred, colour alone; size alone on grey pairs), then
    # the candidate causes (budget, colour views, alpha background): sprites, the grey pairs, photographs
    # last; a run cut short has whole seeds of the comparisons.
    cells = {p: (COLOUR_CELLS if inferred[p][1] else GREY_CELLS) + EXTRA.get(p, []) for p in pairs}
    first = [(p, c, s) for s in seeds for p in pairs for c in cells[p]
             if c.budget == 1 and not c.views and not c.bg and not (inferred[p][1] and c.name == "Sg")]
    # The candidate causes, cheapest informative first: colour views, ×2 steps where size alone lost
    # (clothing), alpha on grey, then ×2 steps on the colour pairs (dearest).
    order = [("sprites", "Sc +cv"), ("clothing", "Sg ×2"), ("photographs", "Sc +cv"), ("sprites", "Sg"),
             ("photographs", "Sg"), ("sprites", "16c bg128"),
             ("sprites", "Sc ×2"), ("photographs", "Sc ×2"), ("digits", "Sg ×2")]
    rest = sorted(((p, c, s) for s in seeds for p in pairs for c in cells[p] if (p, c, s) not in first),
                  key=lambda t: (order.index((t[0], t[1].name)) if (t[0], t[1].name) in order else len(order), t[2]))
    plan = first + rest
    # One cache file per --seeds, so runs for different seeds can share the machine; all are read.
    cache_path = work / f"cells.{args.seeds.replace(',', '-')}.json"
    cache = {k: v for f in sorted(work.glob("cells*.json")) for k, v in json.loads(f.read_text()).items()}
    conf = f"{args.pretrain_steps}/{args.finetune_steps}/{args.batch}"

    def key(p, c, s):
        return f"{conf}|{p}|{c.name}|{s}"

    if args.report_only:
        plan = [(p, c, s) for p, c, s in plan if key(p, c, s) in cache]

    # Time estimate before anything trains: 2 steps per input shape, scaled by the plan's steps.
    rates = {}
    for p, c, s in plan if not args.no_estimate else []:
        size = 16 if c.size == "16" else inferred[p][0]
        shape = (size, 3 if c.colour else 1)
        if shape not in rates and key(p, c, s) not in cache:
            x = torch.randint(0, 255, (args.batch * 2, shape[1], size, size), dtype=torch.uint8)
            m = build_method_for(shape[1])
            train_ssl_steps(m, x, 1, args.batch)  # warm-up
            t = time.perf_counter()
            train_ssl_steps(m, x, 2, args.batch)
            rates[shape] = (time.perf_counter() - t) / 2
    todo = [(p, c, s) for p, c, s in plan if key(p, c, s) not in cache]
    est = 0.0 if args.no_estimate else sum(rates[(16 if c.size == "16" else inferred[p][0], 3 if c.colour else 1)] * c.budget
              * (args.pretrain_steps + args.finetune_steps) for p, c, s in todo)
    print(f"{len(plan)} cells ({len(plan) - len(todo)} cached); estimated training time {est / 60:.0f} min "
          f"(+ evaluation) at {args.threads} threads", flush=True)

    t_all = time.perf_counter()
    data_cache: dict = {}
    for i, (p, c, s) in enumerate(plan):
        k = key(p, c, s)
        if k in cache:
            continue
        size = 16 if c.size == "16" else inferred[p][0]
        ch = 3 if c.colour else 1
        dk = (p, size, ch, c.bg)
        if dk not in data_cache:
            src, _ = _load(roots[p][0], size, ch, c.bg)
            tx, ty = _load(roots[p][1], size, ch, c.bg)
            data_cache[dk] = (src, *_split(tx, ty))
        res = run_cell(data_cache[dk], c, s, args)
        cache[k] = res
        own = json.loads(cache_path.read_text()) if cache_path.exists() else {}
        cache_path.write_text(json.dumps({**own, k: res}))
        b, f = res["base"], res["finetuned"]
        print(f"[{i + 1}/{len(plan)} {time.perf_counter() - t_all:5.0f} s] {p:11s} {c.name:12s} seed {s}: "
              f"knn {b['knn']:.3f}→{f['knn']:.3f} probe5 {b['probe5']:.3f}→{f['probe5']:.3f} "
              f"full {b['full']:.3f}→{f['full']:.3f} ({res['pretrain_s'] + res['finetune_s']:.0f} s)", flush=True)

    results = {p: {} for p in pairs}
    for p, c, s in plan:
        results[p].setdefault(c.name, {})[s] = cache[key(p, c, s)]
    text = report(results, pairs, inferred, seeds, args, LICENCES)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "defaults_rule.md").write_text(text)
    (RESULTS / "defaults_rule.json").write_text(json.dumps({"config": vars(args), "inferred": inferred, "results": results},
                                                           indent=1, sort_keys=True))


def build_method_for(channels: int):
    from uft.models.encoders import build_encoder
    from uft.ssl.base import build_method

    return build_method("simclr", build_encoder("tiny", in_channels=channels, width=32))


def train_ssl_steps(method, x, steps: int, batch: int) -> None:
    from uft.ssl.train import TrainConfig, train_ssl

    train_ssl(method, x, TrainConfig(steps=steps, batch_size=batch, warmup_steps=0))


def _ms(vals: list[float]) -> str:
    return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}"


def report(results: dict, pairs: list[str], inferred: dict, seeds: list[int], args, licences: dict) -> str:
    out = [f"Settings: pretrain {args.pretrain_steps} steps on the source, finetune {args.finetune_steps} steps on the "
           f"target's train half (× the cell's budget), batch {args.batch}, tiny convnet (width 32), SimCLR; seeds "
           f"{', '.join(map(str, seeds))}; mean ± std over seeds. Score = mean of target k-NN and 5-label probe "
           "accuracy of the finetuned encoder.", ""]
    out += ["Data (every image from a package, nothing downloaded):", ""]
    out += [f"- {p}: inferred {inferred[p][0]} px, {'colour' if inferred[p][1] else 'grey'}; {licences[p]}" for p in pairs]
    out += [""]
    # 1. every cell
    out += ["### Every cell: target metrics base → finetuned", "",
            "| pair | cell | seeds | k-NN | 5-label probe | full probe | finetune Δ 5-label (± draw std) | score | train s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        for name, by_seed in results[p].items():
            rs = list(by_seed.values())
            cols = []
            for m in ("knn", "probe5", "full"):
                cols.append(f"{np.mean([r['base'][m] for r in rs]):.3f} → {np.mean([r['finetuned'][m] for r in rs]):.3f}")
            d = [r["finetuned"]["probe5"] - r["base"]["probe5"] for r in rs]
            spread = np.mean([max(r["finetuned"]["probe5_std"], r["base"]["probe5_std"]) for r in rs])
            out.append(f"| {p} | {name} | {len(rs)} | {' | '.join(cols)} | {np.mean(d):+.3f} ± {spread:.3f} | "
                       f"{_ms([_score(r) for r in rs])} | {np.mean([r['pretrain_s'] + r['finetune_s'] for r in rs]):.0f} |")
    # 2. leave-one-dataset-out
    def gain(rule: str, p: str) -> list[float]:
        colour = inferred[p][1]
        cell, old = RULES[rule](colour).name, RULES["old: 16 px grey"](colour).name
        if cell not in results[p]:
            return []
        return [_score(results[p][cell][s]) - _score(results[p][old][s]) for s in results[p][cell]]

    def cost(rule: str) -> float:
        return float(np.mean([_cost(RULES[rule](inferred[p][1]), inferred[p][0]) for p in pairs]))

    def choose(on: list[str]) -> tuple[float, float, str]:
        """The rule with the best mean gain over the old defaults on ``on`` (ties to 3 decimals: the cheaper)."""
        cands = []
        for rule in RULES:
            gs = [gain(rule, p) for p in on]
            if all(gs):
                cands.append((round(float(np.mean([np.mean(g) for g in gs])), 3), -cost(rule), rule))
        return max(cands)

    final = choose(pairs)
    out += ["", f"Chosen on all {len(pairs)} pairs (the rule `uft run` applies): **{final[2]}** "
            f"(mean Δ {final[0]:+.3f}).", ""]
    out += ["", "### Leave one dataset out: the rule chosen on the other three, scored on the held-out one", "",
            "Δ = score of the chosen rule − score of the old 16 px grey defaults, per seed (paired), mean ± std.", "",
            "| held-out pair | rule chosen without it | mean Δ on the other three | old score | chosen score | Δ on held-out | verdict |",
            "|---|---|---|---|---|---|---|"]
    for held in pairs:
        best = choose([p for p in pairs if p != held])
        rule = best[2]
        g = gain(rule, held)
        colour = inferred[held][1]
        old_cell, cell = RULES["old: 16 px grey"](colour).name, RULES[rule](colour).name
        old_s = [_score(r) for r in results[held][old_cell].values()]
        new_s = [_score(r) for r in results[held][cell].values()] if cell in results[held] else []
        noise = max(np.std(g), 1e-9) if g else 0
        verdict = ("n/a" if len(g) < 2 else "better" if np.mean(g) > 2 * noise else
                   "worse" if np.mean(g) < -2 * noise else "same within noise")
        out.append(f"| {held} | {rule} ({cell}) | {best[0]:+.3f} | {_ms(old_s)} | {_ms(new_s) if new_s else '-'} | "
                   f"{(f'{np.mean(g):+.3f} ± {np.std(g):.3f}') if g else '-'} | {verdict} |")
    # 3. every rule on every pair
    out += ["", "### Every candidate rule: Δ score vs the old defaults (mean ± std over seeds)", "",
            "| rule | " + " | ".join(pairs) + " | relative cost |", "|---|" + "---|" * (len(pairs) + 1)]
    for rule in RULES:
        cols = [(f"{np.mean(g):+.3f} ± {np.std(g):.3f}" if (g := gain(rule, p)) else "-") for p in pairs]
        out.append(f"| {rule} | " + " | ".join(cols) + f" | {cost(rule):.1f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
