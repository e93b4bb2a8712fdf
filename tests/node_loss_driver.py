"""Run a phantom job on a two-node local Ray cluster and remove the second node mid-run.

    python tests/node_loss_driver.py CONFIG

Prints one JSON line with the run summary and where the segmentation actor and tasks ran.
"""

from __future__ import annotations

import json
import sys


def main(config: str) -> None:
    from ray.cluster_utils import Cluster

    from mrseg_cohort.config import load_config
    from mrseg_cohort.pipeline.run import run_job

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    extra = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    removed = []

    def on_progress(summary) -> None:
        if summary.done >= 1 and not removed:
            cluster.remove_node(extra, allow_graceful=False)
            removed.append(True)

    job = load_config(config, {"resources.address": cluster.address})
    summary = run_job(job, progress=on_progress)
    print("RESULT " + json.dumps({"done": summary.done, "failed": summary.failed, "removed": bool(removed),
                                  "failures": [f["message"] for f in summary.failures]}), flush=True)
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
