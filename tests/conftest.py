"""Shared fixtures: phantom cohorts, the bundled demo model, a session-wide local Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from s3_server import s3, s3_root, s3_server, store_root  # noqa: F401  (fixtures: the local S3 server)
from slurm_cluster import slurm  # noqa: F401  (fixture: a one-node SLURM, tests/slurm_cluster.py)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "totalsegmentator-examples"
DEMO_MODEL = REPO / "mrseg_cohort" / "models" / "demo"
DEMO_BODY_COMP_MODEL = REPO / "mrseg_cohort" / "models" / "demo_body_comp"


def shared_file(name: str) -> Path:
    """A file of ../shared/data (skips the test when the folder is absent)."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def phantom_cohort(tmp_path_factory) -> Path:
    """Four ukbb-layout phantom participants (seed 1000, scale 2) with truth."""
    from mrseg_cohort.io.storage import Store
    from mrseg_cohort.phantom.cohort import PhantomSpec, write_phantom_cohort

    out = tmp_path_factory.mktemp("phantoms") / "cohort"
    write_phantom_cohort(Store(), str(out), PhantomSpec(participants=4, seed=1000))
    return out


@pytest.fixture(scope="session")
def demo_model() -> Path:
    if not (DEMO_MODEL / "fold_0" / "checkpoint_final.pth").exists():
        pytest.fail(f"bundled demo model missing at {DEMO_MODEL}")
    return DEMO_MODEL


@pytest.fixture(scope="session")
def body_comp_model() -> Path:
    if not (DEMO_BODY_COMP_MODEL / "fold_0" / "checkpoint_final.pth").exists():
        pytest.fail(f"bundled body-composition demo model missing at {DEMO_BODY_COMP_MODEL}")
    return DEMO_BODY_COMP_MODEL


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (jobs reuse it instead of starting their own)."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def write_job_yaml(path: Path, input_uri: str, output_uri: str, **sections) -> Path:
    """A job YAML for the phantom layout with the demo model; ``sections`` override top-level keys."""
    import yaml

    job = {
        "cohort": {"name": "test", "layout": "phantom"},
        "input": {"uri": input_uri},
        "model": {"weights": str(DEMO_MODEL), "device": "auto"},
        "output": {"uri": output_uri},
        "resources": {"cpu_segmenters": 1, "threads_per_segmenter": 2, "memory_gb_per_scan": 0.5},
    }
    for key, value in sections.items():
        job[key] = {**job.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(job))
    return path


def publish_rows(outputs, batch_id: str, rows: dict, failures: list | None = None) -> None:
    """Publish finished units' rows into ``outputs`` as a run does: holding the output's lease."""
    from mrseg_cohort.ledger.lease import OutputLease

    lease = OutputLease(outputs.store, outputs.root, batch_id.rsplit("-", 1)[0])
    lease.acquire()
    try:
        outputs.publish(batch_id, rows, failures or [], lease.fence, set())
    finally:
        lease.release()
