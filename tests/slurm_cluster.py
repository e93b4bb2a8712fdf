"""A real one-node SLURM for tests: Debian's slurm-wlm and munge, started on 127.0.0.1 in a temporary folder.

munged (a key of its own), slurmctld and slurmd run in the foreground as children of the test session
with a generated slurm.conf (``SLURM_CONF`` points every client command at it), one node of ``cpus``
CPUs, no cgroups, no accounting; nothing under /etc is read or written. Found the hard way:

- munged refuses a socket whose folder (or a parent) is not searchable by everyone: pytest's own
  temporary folders are 0700, so the cluster lives in a ``mkdtemp`` folder under /tmp made 0755;
- slurmd must be root (it becomes the job's user), and finds its node by ``-N`` (the host name need not
  resolve to 127.0.0.1);
- without ``CR_Memory`` a job that asks no memory does not take the whole node's: array tasks share it;
- ``proctrack/linuxproc`` follows processes by parent, so a job's processes that start their own
  session (Ray's daemons) are still signalled and killed with the job, as under cgroups.

Tests skip with one line where the binaries are absent or the daemons do not come up.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scontrol", "scancel", "srun")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}


class SlurmUnavailable(RuntimeError):
    """SLURM cannot run here (one line saying why)."""


def _free_ports(n: int) -> list[int]:
    from mrseg_cohort.slurm import free_ports

    return free_ports(n, "127.0.0.1")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if not (shutil.which(b) or Path("/usr/sbin", b).exists())]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class SlurmCluster:
    """A running one-node SLURM: ``env`` (with ``SLURM_CONF``) for its client commands."""

    root: Path
    conf: Path
    node: str
    cpus: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), **extra}

    def command(self, *args: str, timeout: float = 60, env: dict | None = None, check: bool = True,
                cwd: Path | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env or self.env(),
                              cwd=cwd)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[-2000:]}")
        return done

    def sbatch(self, *args: str, env: dict | None = None, cwd: Path | None = None) -> str:
        """Submit; the job id."""
        return self.command("sbatch", "--parsable", *args, env=env, cwd=cwd).stdout.strip().split(";")[0]

    def jobs(self, job_id: str) -> dict[str, dict[str, str]]:
        """``scontrol show job`` of a job (an array: one entry per task id), fields by name."""
        done = self.command("scontrol", "show", "job", "-o", job_id, check=False)
        out = {}
        for line in done.stdout.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobId" in fields:
                out[fields.get("ArrayTaskId") or fields["JobId"]] = fields
        return out

    def wait(self, job_id: str, timeout_s: float, until=None) -> dict[str, dict[str, str]]:
        """Poll until every task of the job has finished (or ``until(jobs)`` is true)."""
        deadline = time.monotonic() + timeout_s
        while True:
            jobs = self.jobs(job_id)
            if until(jobs) if until else (jobs and all(j["JobState"] in FINISHED for j in jobs.values())):
                return jobs
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not done after {timeout_s:.0f} s: "
                                   f"{ {k: j.get('JobState') for k, j in jobs.items()} }; "
                                   f"slurmctld log: {self.log_tail('slurmctld')}")
            time.sleep(1)

    def log_tail(self, daemon: str, lines: int = 5) -> str:
        path = self.root / "log" / f"{daemon}.log"
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def node_state(self) -> str:
        done = self.command("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", check=False, timeout=20)
        return done.stdout.strip().lower()

    def stop(self) -> None:
        """Cancel this cluster's jobs left, then stop slurmd, slurmctld and munged (SIGTERM, then SIGKILL)."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            try:  # let the jobs end (their steps get SIGTERM, then SIGKILL after KillWait) before slurmd goes
                self.command("scancel", "--user", str(os.getuid()), check=False, timeout=20)
                deadline = time.monotonic() + 90
                while self.command("squeue", "-h", check=False, timeout=20).stdout.strip():
                    if time.monotonic() > deadline:
                        break
                    time.sleep(1)
            except subprocess.TimeoutExpired:
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def _mem_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmUnavailable("no MemTotal in /proc/meminfo")


def write_slurm_conf(root: Path, node: str, cpus: int, ctld_port: int, slurmd_port: int) -> Path:
    """A one-node slurm.conf: every path under ``root``, daemons as root, no cgroups or accounting."""
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=mrsegtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={root}/run/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerParameters=sched_interval=2
KillWait=60
MinJobAge=3600
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={int(_mem_mb() * 0.9)} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def start_slurm_cluster(cpus: int = 2, timeout_s: float = 60.0) -> SlurmCluster:
    """munged, slurmctld and slurmd on 127.0.0.1, waited for until ``sinfo`` shows the node idle.

    Raises:
        SlurmUnavailable: binaries missing, not root, or a daemon that does not come up (its log's tail).
    """
    missing = missing_binaries()
    if missing:
        raise SlurmUnavailable(f"SLURM not installed (no {', '.join(missing)}; .ci/run installs slurm-wlm and munge)")
    if os.geteuid() != 0:
        raise SlurmUnavailable("slurmd must run as root to start jobs")
    root = Path(tempfile.mkdtemp(prefix="mrseg-slurm-", dir="/tmp"))
    root.chmod(0o755)  # munged: the socket's folders must be searchable by all
    for sub, mode in (("run", 0o755), ("munge", 0o700), ("state", 0o755), ("spool", 0o755), ("log", 0o755)):
        (root / sub).mkdir(mode=mode)
        (root / sub).chmod(mode)
    node = socket.gethostname().split(".")[0]
    ctld_port, slurmd_port = _free_ports(2)
    conf = write_slurm_conf(root, node, cpus, ctld_port, slurmd_port)
    cluster = SlurmCluster(root, conf, node, cpus)
    atexit.register(cluster.stop)  # also when the session dies before the fixture's teardown
    key = root / "munge" / "munge.key"
    subprocess.run([_binary("mungekey"), "--create", "--keyfile", str(key)], check=True, capture_output=True)
    key.chmod(0o600)

    def start(name: str, *args: str) -> None:
        log = open(root / "log" / f"{name}.out", "wb")
        cluster.procs[name] = subprocess.Popen([_binary(name), *args], stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, env=cluster.env())
        log.close()

    def fail(why: str) -> SlurmUnavailable:
        tails = {n: (root / "log" / f"{n}.out").read_text(errors="replace").strip().splitlines()[-3:]
                 for n in cluster.procs if (root / "log" / f"{n}.out").exists()}
        cluster.stop()
        return SlurmUnavailable(f"{why}; last lines: {tails}")

    start("munged", "--foreground", f"--socket={root}/run/munge.socket", f"--key-file={key}",
          f"--pid-file={root}/run/munged.pid", f"--log-file={root}/log/munged.log",
          f"--seed-file={root}/munge/munged.seed")
    deadline = time.monotonic() + timeout_s
    while not (root / "run" / "munge.socket").exists():
        if cluster.procs["munged"].poll() is not None or time.monotonic() > deadline:
            raise fail("munged did not start")
        time.sleep(0.2)
    start("slurmctld", "-D", "-f", str(conf))
    start("slurmd", "-D", "-f", str(conf), "-N", node)
    while True:
        dead = [n for n, p in cluster.procs.items() if p.poll() is not None]
        if dead:
            raise fail(f"{', '.join(dead)} exited")
        try:
            state = cluster.node_state()
        except subprocess.TimeoutExpired:
            state = ""
        if state == "idle":
            return cluster
        if time.monotonic() > deadline:
            raise fail(f"node {node} not idle after {timeout_s:.0f} s (state {state or 'unknown'!r})")
        time.sleep(1)


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """The session's one-node SLURM (skips the test with one line where it cannot start)."""
    try:
        cluster = start_slurm_cluster()
    except (SlurmUnavailable, OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"no SLURM here: {err}")
    yield cluster
    cluster.stop()
