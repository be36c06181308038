"""Fault injection points for crash tests and benchmarks.

``checkpoint("after-commit")`` kills the current process with SIGKILL when the environment variable
``OBSLAKE_FAULT_AT`` names that point — exactly what an OOM kill or a lost worker does. It costs one
dictionary lookup when unset.
"""

from __future__ import annotations

import os
import signal

POINTS = ("during-read", "after-write", "after-commit", "fabric-after-write", "fabric-after-commit")


def checkpoint(name: str) -> None:
    """Die here, as by ``kill -9``, if ``OBSLAKE_FAULT_AT == name``."""
    if os.environ.get("OBSLAKE_FAULT_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
