"""Steps that start at once (KFP's parallel pods, ``uft run`` with UFT_LOCAL_WORKERS) each look for
the pipeline's parent run and make it when there is none: they must all end on one parent."""

import threading

from uft import tracking


def _at_once(n: int, fn) -> list:
    barrier, out, errors = threading.Barrier(n), [None] * n, []

    def work(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn()
        except Exception as e:  # noqa: BLE001 — reported below with the thread's result
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return out


def test_steps_starting_at_once_share_one_experiment_and_parent_run(mlflow_env):
    from mlflow.tracking import MlflowClient

    for attempt in range(5):  # the race is a window, not a certainty: several tries make it likely
        key = f"race-{attempt}"
        parents = _at_once(8, lambda: tracking.parent_run_id("race", key))
        assert len(set(parents)) == 1, f"attempt {attempt}: steps started at once made {len(set(parents))} parent runs"
        exp = MlflowClient().get_experiment_by_name("race").experiment_id
        live = MlflowClient().search_runs([exp], filter_string=f"tags.`{tracking.TAG_RUN}` = '{key}'")
        assert [r.info.run_id for r in live] == parents[:1], "a losing duplicate was left in the experiment"
        assert tracking.parent_run_id("race", key) == parents[0]  # a later step finds the same one


def test_a_parent_stamped_by_a_clock_ahead_costs_one_settle_not_the_skew(mlflow_env):
    import time

    from mlflow.tracking import MlflowClient

    exp = tracking.experiment_id("skew")
    ahead = MlflowClient().create_run(exp, start_time=int((time.time() + 3600) * 1000),
                                      tags={tracking.TAG_RUN: "k", tracking.TAG_STEP: tracking.PARENT}).info.run_id
    t0 = time.monotonic()
    assert tracking.parent_run_id("skew", "k") == ahead
    assert time.monotonic() - t0 < tracking.PARENT_SETTLE_S + 2
