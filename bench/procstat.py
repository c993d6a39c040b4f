"""What the benchmarks read of a process from /proc: its peak resident memory and its CPU time."""
from __future__ import annotations

import os
from pathlib import Path


def rss_peak_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """CPU time (user + system) the process has used so far: per delivery, it does not depend on
    what else the machine runs, as the wall-clock figures do."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
