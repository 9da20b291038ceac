"""Helpers the bench scripts share for measuring broker processes (Linux /proc).

Importing it has no side effects: no environment read, nothing computed at import time.
"""

import os
import resource


def cpu_seconds(pid):
    """CPU seconds (utime + stime, from /proc/PID/stat) the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_nofile():
    """Raises this process's open-file limit to its hard limit (children inherit it); returns
    the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
