"""Helpers the bench scripts share for measuring broker processes (Linux /proc).

Importing it has no side effects: no environment read, nothing computed at import time.
"""

import os


def cpu_seconds(pid):
    """CPU seconds (utime + stime, from /proc/PID/stat) the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
