"""What the SLURM scripts in infra/slurm/ need from Python: the node names of an allocation and free ports.

``SLURM_JOB_NODELIST`` is a compressed host list (``gpu[01-03,07]``, ``a1,b[2-3]``); ``scontrol show
hostnames`` expands it where SLURM's commands are installed, :func:`expand_nodelist` everywhere else.
The scripts call this module as a command::

    python -m mrseg_cohort.slurm hostnames "$SLURM_JOB_NODELIST"   # one name per line
    python -m mrseg_cohort.slurm ports 8                            # 8 TCP ports free here, one line
"""

from __future__ import annotations

import itertools
import re
import shutil
import socket
import subprocess
import sys

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand_nodelist(nodelist: str) -> list[str]:
    """Node names of a SLURM host list, in its order: ``"gpu[01-03,07]"`` -> ``gpu01 gpu02 gpu03 gpu07``.

    Ranges keep the zero padding of their lower bound (``[08-10]`` -> ``08 09 10``); several bracket
    groups in one name expand to every combination (``r[1-2]n[1-2]`` -> ``r1n1 r1n2 r2n1 r2n2``).

    Raises:
        ValueError: unbalanced brackets, an empty name, or a range that is not ``low-high`` with low <= high.
    """
    names: list[str] = []
    for item in _split_top_level(nodelist):
        parts = re.split(r"(\[[^\[\]]*\])", item)
        if any(("[" in p or "]" in p) and not (p.startswith("[") and p.endswith("]")) for p in parts):
            raise ValueError(f"host list {nodelist!r}: unbalanced brackets in {item!r}")
        choices = [_expand_group(p[1:-1], nodelist) if p.startswith("[") else [p] for p in parts]
        names.extend("".join(combo) for combo in itertools.product(*choices))
    return names


def _split_top_level(nodelist: str) -> list[str]:
    items, depth, current = [], 0, []
    for char in nodelist.strip():
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise ValueError(f"host list {nodelist!r}: unbalanced brackets")
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise ValueError(f"host list {nodelist!r}: unbalanced brackets")
    items.append("".join(current))
    if any(not item.strip() for item in items):
        raise ValueError(f"host list {nodelist!r}: an empty name")
    return [item.strip() for item in items]


def _expand_group(group: str, nodelist: str) -> list[str]:
    out = []
    for part in group.split(","):
        match = _RANGE.match(part.strip())
        if not match:
            raise ValueError(f"host list {nodelist!r}: [{group}] holds {part!r}, expected a number or low-high")
        low, high = match[1], match[2] or match[1]
        if int(high) < int(low):
            raise ValueError(f"host list {nodelist!r}: range {part!r} runs backwards")
        out.extend(str(n).zfill(len(low)) for n in range(int(low), int(high) + 1))
    return out


def hostnames(nodelist: str) -> list[str]:
    """Node names of a host list: ``scontrol show hostnames`` where SLURM is installed (it knows every
    syntax its version accepts), else :func:`expand_nodelist`."""
    scontrol = shutil.which("scontrol")
    if scontrol:
        done = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True,
                              timeout=30)
        if done.returncode == 0 and done.stdout.split():
            return done.stdout.split()
    return expand_nodelist(nodelist)


def free_ports(n: int, host: str = "") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` (every interface by default) right now, picked by the
    kernel: two jobs sharing a node do not pick the same fixed ports."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def main(argv: list[str]) -> int:
    """``hostnames NODELIST`` or ``ports N``; exit 2 with one line on a bad call."""
    try:
        if len(argv) == 2 and argv[0] == "hostnames":
            print("\n".join(hostnames(argv[1])))
        elif len(argv) == 2 and argv[0] == "ports" and argv[1].isdigit():
            print(" ".join(map(str, free_ports(int(argv[1])))))
        else:
            print("usage: python -m mrseg_cohort.slurm hostnames NODELIST | ports N", file=sys.stderr)
            return 2
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
