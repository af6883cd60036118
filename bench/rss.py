"""Peak memory of the current process, without importing torch (the ingest bench measures a
process that never imports it)."""

from __future__ import annotations


def peak_rss_mb() -> float:
    """This process's peak RSS in MB (``VmHWM``). Not ``ru_maxrss``: Linux carries that across fork
    and ``exec``, so a subprocess would report at least the RSS of the (torch-importing) parent it
    was forked from."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM")).split()[1]) / 1024
