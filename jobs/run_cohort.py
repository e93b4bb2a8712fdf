"""Ray job entry point: run (or resume) a cohort job on the Ray cluster this process runs in.

Submit it to a running cluster (Ray cluster launcher, KubeRay, or ``ray start``)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/run_cohort.py --config configs/ukbb.yaml

The driver joins the existing cluster (``resources.address: auto`` unless the config or
``--address`` names another), runs :func:`mrseg_cohort.pipeline.run.run_job` and prints the run's
summary as one JSON line. Exit statuses: those of ``mrseg-cohort run`` (``--help`` lists them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from mrseg_cohort.cli._common import SIGNAL_EXIT, ExitStatus, error_line, exit_statuses


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="run_cohort.py", description=__doc__.split("\n\n")[0],
                                     epilog=exit_statuses("run"))
    parser.add_argument("--config", required=True, help="job YAML file (path inside the working dir or image)")
    parser.add_argument("--address", default=None,
                        help="Ray address to join (default: resources.address of the config, else 'auto')")
    parser.add_argument("--output", default=None, help="override output.uri")
    parser.add_argument("--first-n", type=int, default=None, help="override limits.first_n")
    parser.add_argument("--restart", action="store_true", help="delete earlier results under the output first")
    parser.add_argument("--json-logs", action="store_true", help="one JSON object per log line")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mrseg_cohort.config import load_config  # imported here so that --help is instant
    from mrseg_cohort.errors import ConfigError
    from mrseg_cohort.logs import configure_logging
    from mrseg_cohort.pipeline.run import run_job
    from mrseg_cohort.pipeline.signals import StopRequest, stop_on_signals

    configure_logging(logging.INFO, args.json_logs)
    overrides: dict = {}
    if args.output is not None:
        overrides["output.uri"] = args.output
    if args.first_n is not None:
        overrides["limits.first_n"] = args.first_n
    try:
        job = load_config(args.config, overrides)
        address = args.address or job.resources.address or "auto"  # join the cluster, never start one
        job = job.model_copy(update={"resources": job.resources.model_copy(update={"address": address})})
        with stop_on_signals(StopRequest()) as stop:
            summary = run_job(job, restart=args.restart, stop=stop)
    except (ConfigError, OSError) as err:
        print(error_line(err), file=sys.stderr)
        return ExitStatus.CANNOT_START
    record = dataclasses.asdict(summary)
    record["failures"] = record["failures"][:20]  # the full list is in tables/failures
    print(json.dumps({"summary": record, "failures_uri": summary.failures_uri}, default=str))
    print(f"run {summary.run_id} on {summary.device or 'no work'}: {summary.done} done, {summary.failed} failed, "
          f"{summary.already_done} already done earlier ({summary.seconds:.0f} s)")
    if summary.interrupted_by:
        print(f"interrupted ({summary.interrupted_by}): {summary.published} scan(s) published by this run; "
              "submit the same job again to resume", file=sys.stderr)
        return SIGNAL_EXIT.get(summary.interrupted_by, ExitStatus.CANNOT_START)
    return ExitStatus.SOME_FAILED if summary.failed else ExitStatus.DONE


if __name__ == "__main__":
    sys.exit(main())
