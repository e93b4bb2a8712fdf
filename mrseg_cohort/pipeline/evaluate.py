"""Evaluate many prediction/reference pairs on Ray: one CPU task per pair.

The only evaluation module that imports ray. Each task runs
:func:`mrseg_cohort.evaluation.evaluate_pair` (which reads through the pickled
:class:`~mrseg_cohort.io.storage.Store`, so object-store clients are made inside the worker) and
returns small records; at most ``max_in_flight`` tasks are pending at a time, so a large list does
not flood the scheduler. A task that dies (worker crash, out of memory) becomes an error row.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from mrseg_cohort.evaluation import EvalOptions, Pair, PairResult, base_row, evaluate_pair
from mrseg_cohort.io.storage import Store

log = logging.getLogger(__name__)


def evaluate_pairs_ray(store: Store, pairs: Sequence[Pair], options: EvalOptions,
                       address: str | None = None, num_cpus: int | None = None,
                       max_in_flight: int | None = None,
                       on_result: Callable[[PairResult], None] | None = None) -> list[PairResult]:
    """Evaluate ``pairs`` as Ray tasks; results come back in the order of ``pairs``.

    Args:
        address: Ray cluster to join (``"auto"``, ``"ray://host:10001"``); None joins the cluster
            named by ``RAY_ADDRESS`` if one is set (Ray's own rule), else starts a local Ray.
        num_cpus: CPUs of a local Ray started here (default: all); leave None to join a cluster.
        max_in_flight: pending tasks at most (default: 4 x the cluster's CPUs).
    """
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        local = {"num_cpus": num_cpus} if num_cpus else {}
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False, **local)
    try:
        task = ray.remote(num_cpus=1, max_retries=1)(evaluate_pair)
        limit = max_in_flight or max(2, 4 * int(ray.cluster_resources().get("CPU", 1)))
        store_ref, options_ref = ray.put(store), ray.put(options)
        results: list[PairResult | None] = [None] * len(pairs)
        pending: dict = {}
        next_index = 0
        while next_index < len(pairs) or pending:
            while next_index < len(pairs) and len(pending) < limit:
                pending[task.remote(store_ref, pairs[next_index], options_ref)] = next_index
                next_index += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            results[index] = _fetch(ray, done[0], pairs[index])
            if on_result:
                on_result(results[index])  # type: ignore[arg-type]
        return results  # type: ignore[return-value]
    finally:
        if started_here:
            ray.shutdown()


def _fetch(ray, ref, pair: Pair) -> PairResult:  # noqa: ANN001 - ray is imported lazily
    """The task's result, or an error row when the task itself failed (crash, out of memory)."""
    try:
        return ray.get(ref)
    except (ray.exceptions.RayError, OSError) as err:  # worker died: the pair's boundary
        log.error("Ray task for pair %s failed: %s", pair.pair_id, err)
        reason = str(err).splitlines()[0] if str(err) else repr(err)
        return PairResult(base_row(pair, "error", type(err).__name__, f"Ray task failed: {reason}"))
