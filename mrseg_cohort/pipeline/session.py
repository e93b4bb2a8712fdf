"""Ray for one run: start a local Ray or join a cluster, and what the cluster has right now.

A local Ray (no ``resources.address``) is a laptop or one machine: what it has at start is all it
will ever have. A cluster may autoscale: GPUs and CPUs join after the job starts (the driver asks
for them by creating actors and tasks that need them) and leave again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Iterator

from mrseg_cohort.config import ResourcesConfig
from mrseg_cohort.errors import ConfigError
from mrseg_cohort.pipeline import signals

log = logging.getLogger(__name__)


@dataclass
class RaySession:
    """The Ray this run uses."""

    on_cluster: bool
    """Joined an existing cluster (which may autoscale) rather than started a local Ray."""
    started_here: bool

    @staticmethod
    def resources() -> dict[str, float]:
        import ray

        return dict(ray.cluster_resources())

    def gpus(self) -> int:
        """GPUs the cluster has right now (logical ``GPU`` resources)."""
        return int(self.resources().get("GPU", 0))

    @staticmethod
    def own_node_alive() -> bool:
        """Whether the Ray node this driver is attached to is alive. False once its raylet ended
        (killed, out of memory) and the GCS marked it dead: then nothing this run asks for can start,
        on a laptop because there is no other node, on a cluster because the driver's own node holds
        the objects it owns."""
        import ray

        me = ray.get_runtime_context().get_node_id()
        return any(node["NodeID"] == me and node["Alive"] for node in ray.nodes())


class RayStartStopped(Exception):
    """A signal stopped the run while Ray started (Ray was shut down again)."""


@contextlib.contextmanager
def ray_session(resources: ResourcesConfig) -> Iterator[RaySession]:
    """Start or join Ray for one run; shut down only what this call started."""
    import ray

    if ray.is_initialized():  # a caller (tests, a notebook) already did
        yield RaySession(on_cluster=bool(resources.address), started_here=False)
        return
    without_failure_signal_handler()
    with signals.held_while():  # Ray's core installs its own SIGINT/SIGTERM handlers while it starts
        try:
            if resources.address:
                ctx = ray.init(address=resources.address, logging_level=logging.WARNING, log_to_driver=False)
                url = getattr(ctx, "dashboard_url", None)
                log.info("joined Ray cluster at %s%s", resources.address, f"; dashboard http://{url}" if url else "")
            else:
                ray.init(num_cpus=usable_cpus(), include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False)
        except SystemExit as err:  # Ray's own SIGTERM handler (sys.exit(15)) ran while Ray started
            if err.code not in (signal.SIGINT, signal.SIGTERM):
                raise
            with contextlib.suppress(Exception):
                ray.shutdown()
            signals.deliver(int(err.code))  # to this run's handler: the run stops as for any signal
            raise RayStartStopped(signal.Signals(int(err.code)).name) from None
        except Exception as err:  # noqa: BLE001 - Ray raises bare Exceptions (a node that timed out starting)
            with contextlib.suppress(Exception):
                ray.shutdown()
            where = f"the Ray cluster at {resources.address}" if resources.address else "a local Ray"
            text = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise ConfigError(f"could not start or join {where}: {text}; scans already done are kept: run the "
                              "same command again to resume") from None
    try:
        yield RaySession(on_cluster=bool(resources.address), started_here=True)
    finally:
        if not resources.address and threading.current_thread() is threading.main_thread():
            without_graceful_wait()  # (only the main thread holds the signals while Ray starts)
        ray.shutdown()


def without_graceful_wait() -> None:
    """Let ``ray.shutdown`` stop the local Ray this run started with SIGKILL at once. The daemons
    were started while SIGINT/SIGTERM were held (:func:`.signals.held_while`) and inherited that
    signal mask, so a SIGTERM to the run's process group (a cluster stopping the driver) leaves them
    to the driver. Ray's graceful stop (SIGTERM, a second's wait per daemon, then SIGKILL) could
    therefore only end in its SIGKILL, five seconds later. A driver-only change (like
    :func:`without_failure_signal_handler`); another Ray layout keeps its graceful stop."""
    try:
        from ray._private import worker
        kill_all_processes = worker._global_node.kill_all_processes
    except (ImportError, AttributeError):
        return

    def at_once(*args, **kwargs):
        return kill_all_processes(*args, **{**kwargs, "allow_graceful": False})

    worker._global_node.kill_all_processes = at_once


def without_failure_signal_handler() -> None:
    """Keep Ray's C++ failure-signal handler out of this process (the driver; Ray's workers keep
    theirs). Inside ``ray.init`` it takes SIGTERM for the whole process and aborts it (exit -6, no
    final line) when a signal reaches a thread that does not hold it back: the lease's heartbeat,
    the progress bar's, fsspec's I/O loop, all started before Ray. Python's handler then takes the
    signal instead and the run stops as for any signal (:mod:`.signals`). The cost: a crash inside
    the driver's Ray core prints no C++ stack trace. ``RAY_DISABLE_FAILURE_SIGNAL_HANDLER=1`` says
    the same, but Ray's processes would inherit it; this is the constant Ray reads when the driver's
    core starts (tests/test_operators.py signals a thread inside ``ray.init``)."""
    try:
        from ray._private import ray_constants
    except ImportError:  # another Ray layout: its default stays
        return
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True


def usable_cpus() -> int:
    """CPUs this process may run on (a SLURM task's allocation, a container's cpuset), not every
    core of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_device(requested: str, gpus_now: int, on_cluster: bool, gpus_wanted: int | None) -> str:
    """``cuda`` or ``cpu`` for the segmentation actors; refuses asks that can never be met.

    - ``cpu``: the CPU.
    - ``cuda``: GPU actors. On a local Ray without GPUs this can never work (refused at once); on a
      cluster, GPU workers may still join (the actor pool asks for them and waits).
    - ``auto``: GPUs if the cluster has some now, or on a cluster whose ``resources.gpus`` asks for
      some (the autoscaler starts them); else the CPU.
    """
    if requested == "cpu":
        return "cpu"
    if gpus_wanted == 0 and requested == "cuda":
        raise ConfigError("resources.gpus is 0 but model.device is 'cuda'; set resources.gpus to the GPUs "
                          "to use (or leave it out), or model.device: cpu")
    if requested == "cuda":
        if gpus_now < 1 and not on_cluster:
            raise ConfigError("model.device is 'cuda' but no GPU is present (Ray sees 0 GPUs on this "
                              "machine); set model.device: auto to run on the CPU, or run on a GPU node")
        return "cuda"
    if gpus_wanted == 0:
        return "cpu"
    return "cuda" if gpus_now >= 1 or (on_cluster and gpus_wanted) else "cpu"
