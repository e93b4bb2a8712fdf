"""Process helpers for the crash tests (Linux /proc): find and kill what a test started."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """All processes below ``pid`` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def matching(text: str) -> list[int]:
    """Processes (other than this one) whose command line contains ``text``."""
    return [int(e) for e in os.listdir("/proc")
            if e.isdigit() and int(e) != os.getpid() and text in command_line(int(e))]


def kill_matching(text: str) -> None:
    """SIGKILL every process whose command line contains ``text`` (e.g. a Ray temp dir)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and text in command_line(int(entry)):
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass
