"""What a job has done and what it would do: the data behind ``plan`` and ``status``.

Read-only: nothing here writes to the output (safe while a job runs).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd

from mrseg_cohort.config import JobConfig
from mrseg_cohort.io.storage import Store
from mrseg_cohort.io.tables import read_table_folder
from mrseg_cohort.manifest import ScanSource, discover
from mrseg_cohort.ledger.outputs import INDEXED_COLUMNS, Outputs
from mrseg_cohort.sharding import Shard, select
from mrseg_cohort.tables import SCHEMAS
from mrseg_cohort.ledger.work_units import plan_work

GPU_STAGES = ("preprocess", "network", "export")
CPU_STAGES = ("read", "stitch", "measure", "write")


@dataclass
class JobState:
    """Counts of scans (participant x visit) for one config's manifest and output."""

    manifest: int
    participants: int
    done: int
    staged: int
    failed: int
    pending: int
    input_bytes: int | None
    failures: pd.DataFrame = field(repr=False)
    costs: pd.DataFrame | None = field(default=None, repr=False)


FAILURE_COLUMNS = list(INDEXED_COLUMNS["failures"])
"""Columns of ``failures`` that status shows (all in the table's index)."""
COST_COLUMNS = ["participant_id", "visit", "status", *(f"seconds_{s}" for s in GPU_STAGES + CPU_STAGES)]
"""Columns of ``scans`` that the estimate of plan reads (:func:`measured_costs`)."""


def job_state(job: JobConfig, with_sizes: bool = False, shard: Shard | None = None,
              with_costs: bool = False) -> tuple[JobState, list[ScanSource]]:
    """Manifest (or its ``shard``) anti-joined with the output: done (every configured model
    committed), staged (finished, not yet published), failed (not done, with a failure recorded),
    pending (the rest). Only the columns these need are read, while the input is listed;
    ``with_costs`` also reads the per-stage seconds of ``scans`` (``JobState.costs``, for plan's
    estimate)."""
    in_store = Store.from_config(job.input.storage)
    outputs = Outputs.for_job(job)
    with ThreadPoolExecutor(max_workers=4) as pool:  # the output is read while the input is listed
        committed = pool.submit(outputs.committed_units)
        staged_units = pool.submit(outputs.staged_keys)
        failures_read = pool.submit(outputs.read_indexed, "failures", FAILURE_COLUMNS)
        costs_read = pool.submit(read_table_folder, outputs.store, outputs.table_uri("scans"), columns=COST_COLUMNS,
                                 schema=SCHEMAS["scans"]) if with_costs else None
        sources = select(discover(job, in_store), shard)
        keys = {s.key for s in sources}
        plan = plan_work(sources, tuple(m.name for m in job.models), committed.result(), [])
        staged_keys = staged_units.result()
        failures_table = failures_read.result()
        scans = costs_read.result() if costs_read is not None else None
    done = keys - {u.source.key for u in plan.todo}  # every configured model committed
    staged = ({(k[0], k[1]) for k in staged_keys} & keys) - done
    failures = failures_table.to_pandas() if failures_table is not None else pd.DataFrame(columns=FAILURE_COLUMNS)
    if shard is not None:  # this shard's failures only
        ours = [shard.holds(p, v) for p, v in zip(failures["participant_id"], failures["visit"])]
        failures = failures[pd.Series(ours, index=failures.index, dtype=bool)]
    failed_keys = set(zip(failures["participant_id"], failures["visit"])) & keys
    failed = failed_keys - done - staged
    n_bytes = None
    if with_sizes:
        n_bytes = sum(in_store.size(u) for s in sources for u in s.uris)
    costs = scans.to_pandas() if scans is not None else None
    state = JobState(len(sources), len({s.participant_id for s in sources}), len(done), len(staged),
                     len(failed), len(keys) - len(done) - len(staged) - len(failed), n_bytes,
                     failures.sort_values("time", ascending=False) if len(failures) else failures, costs)
    return state, sources


@dataclass(frozen=True)
class Estimate:
    """Wall time and GPU-hours for the scans still to do, from per-stage seconds per scan."""

    scans: int
    gpu_seconds_per_scan: float
    cpu_seconds_per_scan: float
    devices: int
    cpu_workers: int
    wall_hours: float
    device_hours: float
    source: str


def estimate(scans: int, gpu_seconds_per_scan: float, cpu_seconds_per_scan: float, devices: int,
             cpu_workers: int, source: str) -> Estimate:
    """Throughput model: the device stage and the CPU stages run concurrently, so a run goes at the
    pace of the slower of ``devices / gpu_s`` and ``cpu_workers / cpu_s`` scans per second.
    ``device_hours`` counts the devices held for the whole run (what a cluster bills).

    Raises:
        ValueError: fewer than 1 device or CPU worker, a negative number of scans, or negative
            seconds per scan.
    """
    for name, value, least in (("devices", devices, 1), ("CPU workers", cpu_workers, 1), ("scans", scans, 0)):
        if value < least:
            raise ValueError(f"{name} to plan for must be at least {least}, not {value}")
    for name, value in (("device", gpu_seconds_per_scan), ("CPU", cpu_seconds_per_scan)):
        if not value >= 0:
            raise ValueError(f"{name} seconds per scan must be 0 or more, not {value}")
    rate = min(devices / max(gpu_seconds_per_scan, 1e-9), cpu_workers / max(cpu_seconds_per_scan, 1e-9))
    wall_h = scans / rate / 3600 if scans else 0.0
    return Estimate(scans, gpu_seconds_per_scan, cpu_seconds_per_scan, devices, cpu_workers, wall_h,
                    wall_h * devices, source)


def measured_costs(costs: pd.DataFrame | None) -> tuple[float, float, int] | None:
    """Median device-stage and CPU-stage seconds per scan from an output's scans table."""
    if costs is None or costs.empty:
        return None
    ok = costs[costs["status"] == "ok"]
    if ok.empty:
        return None
    per_scan = ok.groupby(["participant_id", "visit"]).sum(numeric_only=True)
    gpu = sum(per_scan.get(f"seconds_{s}", pd.Series([0.0])).median() for s in GPU_STAGES)
    cpu = sum(per_scan.get(f"seconds_{s}", pd.Series([0.0])).median() for s in CPU_STAGES)
    if not (math.isfinite(gpu) and math.isfinite(cpu)):
        return None
    return float(gpu), float(cpu), len(per_scan)
