"""A job on a local Ray cluster whose GPUs arrive after it starts (issue 17).

    python tests/cluster_driver.py CONFIG

The head has no CPUs and no GPUs, as on an autoscaling cluster at submit. While the job waits for
its first GPU actor a node with a (logical) GPU joins; after the first scan a second GPU node joins
(the pool grows); after the next scan that second node is removed (nothing may be lost). Actors on
logical GPUs compute on the CPU (MRSEG_COHORT_TEST_LOGICAL_GPUS, a test-only switch). Prints one
JSON line: the run summary and what the pool did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time


def main(config: str) -> None:
    os.environ["MRSEG_COHORT_TEST_LOGICAL_GPUS"] = "1"
    from ray.cluster_utils import Cluster

    from mrseg_cohort.config import load_config
    from mrseg_cohort.pipeline import actor_pool
    from mrseg_cohort.pipeline.run import run_job

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False})
    events: list[str] = []
    added: list = []
    created = []
    original_add = actor_pool.ActorPool._add

    def counting_add(self, n):
        created.append(n)
        original_add(self, n)

    actor_pool.ActorPool._add = counting_add

    def first_gpu_joins_later() -> None:
        # `ray start` in a process of its own, as a node joins a real cluster (Cluster.add_node
        # installs signal handlers, which only the main thread may do)
        time.sleep(8)
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        added.append(subprocess.Popen([ray_cli, "start", "--address", cluster.address, "--num-cpus=2",
                                       "--num-gpus=1", "--block", "--disable-usage-stats"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        events.append("gpu node 1 joined while the job waited")

    threading.Thread(target=first_gpu_joins_later, daemon=True).start()

    def on_progress(summary) -> None:
        finished = summary.done + summary.failed
        if finished >= 1 and len(added) == 1:
            added.append(cluster.add_node(num_cpus=1, num_gpus=1))
            events.append(f"gpu node 2 joined after scan {finished}")
        elif finished >= 2 and len(added) == 2 and "gpu node 2 removed" not in events:
            cluster.remove_node(added[1], allow_graceful=False)
            events.append("gpu node 2 removed")

    job = load_config(config, {"resources.address": cluster.address, "model.device": "cuda",
                               "resources.gpu_wait_s": 120})
    t0 = time.monotonic()
    summary = run_job(job, progress=on_progress)
    print("RESULT " + json.dumps({"done": summary.done, "failed": summary.failed, "device": summary.device,
                                  "events": events, "actors_created": created, "seconds": time.monotonic() - t0,
                                  "failures": [f["message"] for f in summary.failures]}), flush=True)
    added[0].terminate()
    added[0].wait(timeout=60)
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
