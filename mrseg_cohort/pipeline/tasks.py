"""The CPU stages as Ray tasks: read + stitch, and finish (write labels, measure, stage rows).

Each returns a status dict first: ``{"ok": True, ...}`` or the per-scan error as data (a
``failures`` row), so that one bad scan never raises in the driver. Outputs go to deterministic
keys, so a task Ray retries after a lost worker overwrites instead of duplicating.
"""

from __future__ import annotations

from mrseg_cohort.errors import ScanError
from mrseg_cohort.pipeline import stages
from mrseg_cohort.pipeline.actor_pool import error_status
from mrseg_cohort.ledger.work_units import ScanUnit


def remote_tasks(max_retries: int, memory_bytes: int) -> dict:
    """``load`` and ``finish`` as Ray remote functions with the run's retries and memory."""
    import ray

    @ray.remote(num_returns=3, max_retries=max_retries, memory=memory_bytes)
    def load(ctx: stages.RunContext, unit: ScanUnit):
        try:
            loaded = stages.read_and_stitch(ctx, unit.source)
        except ScanError as err:
            return error_status(err.with_context(unit.source.participant_id, "read")), None, None
        return {"ok": True}, loaded, stages.segmentation_inputs(ctx, loaded)

    @ray.remote(max_retries=max_retries, memory=memory_bytes)
    def finish(ctx: stages.RunContext, unit: ScanUnit, loaded, segmentations):
        try:
            return {"ok": True, "tables": stages.finish(ctx, unit, loaded, segmentations)}
        except ScanError as err:
            return error_status(err.with_context(unit.source.participant_id, "finish"))

    return {"load": load, "finish": finish}
