"""Keep a step as polite as the search that started it.

The local backend starts every step in a session of its own (``setsid``), so that a step and its
data-loader workers can be signalled as one group. On Linux with autogroup scheduling
(``/proc/sys/kernel/sched_autogroup_enabled``, the default of most desktop and VM kernels) a new
session is also a new scheduling group at nice 0, and the kernel shares the CPU *between groups*
before it looks at nice values. So ``nice -n 19 quicktune metadataset build ...`` did not keep the
machine usable: each of its steps took a whole group's share, as much as an interactive shell.
A step calls :func:`inherit_niceness` right after its new session starts: when the process runs at
a positive nice value, its autogroup gets the same value. Raising one's own autogroup nice needs
no privilege; anything else (no autogroup, no /proc, a read-only /proc) is ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

AUTOGROUP = Path("/proc/self/autogroup")


def inherit_niceness(path: Path = AUTOGROUP) -> bool:
    """Give this process's autogroup its nice value when that is positive; True when written."""
    try:
        nice = os.nice(0)
    except OSError:
        return False
    if nice <= 0:
        return False
    try:
        path.write_text(str(min(nice, 19)))
    except OSError:
        return False
    return True
