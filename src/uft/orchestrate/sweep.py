"""`uft sweep`: one full pipeline run per point of a parameter grid × seeds.

The grid is the cartesian product of ``KEY=V1,V2,…`` axes (any :class:`uft.config.RunConfig`
field) times the seeds, on top of fixed ``--param`` values. Every configuration is validated
before the first run starts, so a typo in the last grid value does not surface an hour in. Runs go
to one MLflow experiment, where ``uft compare --experiment NAME`` groups them by method with
mean ± std over seeds.

Locally the runs execute one after another through kfp.local (each is an ordinary `uft run`, so
a rerun of the sweep reuses every finished step from the content-hash cache); on a cluster they
are submitted to KFP and run in parallel there. (The in-process benchmark ``bench/uft_sweep.py``
is the cheaper way to run the large few-label study of the README on two cores.)
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

from uft.config import RunConfig, validate_config
from uft.errors import UftError


def parse_axes(axes: list[str]) -> dict[str, list[str]]:
    """``["ssl_method=simclr,act", "replay_ratio=0,0.5"]`` → ``{"ssl_method": ["simclr", "act"], …}``."""
    out: dict[str, list[str]] = {}
    for a in axes:
        key, sep, values = a.partition("=")
        key = key.strip()
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not vals:
            raise UftError(f"--grid {a!r} is not KEY=V1,V2,…: write e.g. --grid ssl_method=simclr,act")
        if key in out:
            raise UftError(f"--grid names {key} twice: give all its values in one --grid {key}=…")
        if key == "seed":
            raise UftError("--grid seed=… is what --seeds is for: pass --seeds 0,1,2")
        if key not in RunConfig.model_fields:
            raise UftError(f"--grid {key}: not a pipeline parameter; valid ones are {', '.join(sorted(RunConfig.model_fields))}")
        out[key] = vals
    return out


def expand(axes: dict[str, list[str]], seeds: list[int], fixed: dict[str, Any]) -> list[RunConfig]:
    """Every grid point × seed as a validated config (grid order, seeds innermost).

    Raises one error naming the first bad point, before anything runs."""
    if not seeds:
        raise UftError("--seeds is empty: pass e.g. --seeds 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise UftError(f"--seeds {seeds} repeats a seed: each run must differ")
    clash = sorted(set(axes) & set(fixed))
    if clash:
        raise UftError(f"{', '.join(clash)} is both a --grid axis and a --param: keep one")
    configs = []
    keys = list(axes)
    for values in itertools.product(*(axes[k] for k in keys)):
        point = dict(zip(keys, values))
        for seed in seeds:
            try:
                configs.append(validate_config({**fixed, **point, "seed": seed}))
            except UftError as e:
                where = ", ".join(f"{k}={v}" for k, v in point.items()) or "the fixed params"
                raise UftError(f"grid point {where}: {e}") from None
    return configs


def describe(cfg: RunConfig, axes: dict[str, list[str]]) -> str:
    """``ssl_method=act replay_ratio=0.5 seed=1``: what distinguishes this run within the sweep."""
    d = cfg.model_dump()
    return " ".join(f"{k}={d[k]}" for k in [*axes, "seed"])


def run_sweep(configs: list[RunConfig], run_one: Callable[[RunConfig], Any],
              on_done: Callable[[int, RunConfig, Any], None] | None = None) -> list[Any]:
    """Run ``run_one`` on each config in order (a failure stops the sweep: what finished stays
    in MLflow and in the cache, so the rerun resumes). Returns the results."""
    results = []
    for i, cfg in enumerate(configs):
        res = run_one(cfg)
        results.append(res)
        if on_done is not None:
            on_done(i, cfg, res)
    return results


def submit_all(configs: list[RunConfig], axes: dict[str, list[str]], host: str, experiment: str, *,
               client: Any = None, **kw: Any) -> list[str]:
    """Submit every config to KFP (the cluster runs them in parallel) → KFP run ids."""
    from uft.orchestrate.submit import NAMESPACE, kfp_client, submit

    client = client or kfp_client(host, kw.get("namespace", NAMESPACE))
    return run_sweep(configs, lambda c: submit(host, c.model_dump(), experiment=experiment, client=client,
                                               run_name=f"uft sweep {describe(c, axes)}", **kw))
