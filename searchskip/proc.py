"""Whether a local process is still running (stale study workers, abandoned export folders)."""

from __future__ import annotations

import os

__all__ = ["pid_alive"]


def pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` runs on this machine. Unknown counts as running (a pid
    <= 0, another user's process, or a platform without POSIX signals), so that nothing a live
    process may own is reclaimed."""
    if pid <= 0 or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True
