"""Kill this process's own raylet while the actor pool waits for a slow-starting actor.

    RAY_TMPDIR=/tmp/x python tests/raylet_loss_driver.py

Prints one line ``RESULT {"error": ..., "message": ..., "seconds": ...}``: how ``ActorPool.start``
ended after the local Ray node died (seconds from the kill).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

from procs import command_line, descendants


class StartsSlowly:
    def __init__(self, models, device, threads, versions=None, max_model_voxels=None):  # SegmentationActor's
        time.sleep(300)

    def ready(self):
        return {"node": "n", "pid": os.getpid(), "device": "cpu"}


def main() -> None:
    import ray

    from mrseg_cohort.config import ResourcesConfig
    from mrseg_cohort.pipeline.actor_pool import ActorPool
    from mrseg_cohort.pipeline.session import RaySession

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    pool = ActorPool(RaySession(on_cluster=False, started_here=True), "cpu", [],
                     ResourcesConfig(cpu_segmenters=1, actor_start_timeout_s=120))
    pool._actor_cls = ray.remote(StartsSlowly).options(max_restarts=0, num_cpus=1)
    killed_at: list[float] = []

    def kill_raylet() -> None:
        time.sleep(3.0)
        for pid in descendants(os.getpid()):
            if "raylet/raylet" in command_line(pid):
                os.kill(pid, signal.SIGKILL)
                killed_at.append(time.monotonic())

    threading.Thread(target=kill_raylet, daemon=True).start()
    try:
        pool.start()
        error, message = None, ""
    except Exception as err:  # noqa: BLE001 - reported to the test
        error, message = type(err).__name__, str(err)
    seconds = time.monotonic() - killed_at[0] if killed_at else None
    print("RESULT " + json.dumps({"error": error, "message": message, "seconds": seconds}), flush=True)
    os._exit(0)  # Ray's shutdown would wait for the dead raylet


if __name__ == "__main__":
    main()
