"""Fault injection at named points of the players ([faults] in the
configuration), for tests: fail at once, or stall (so that a test can kill the
process there) and then fail.

The stall is announced in the log (`injected stall at POINT`) before it
starts, so a test knows when the process sits at that point.
"""

from __future__ import annotations

import logging
import threading

from vnetlib.players.config import Faults
from vnetlib.players.server import Unavailable

log = logging.getLogger(__name__)


def check(faults: Faults, point: str, closing: threading.Event, who: str) -> None:
    """Raise Unavailable if `point` is the configured failure, or stall there first."""
    if faults.stall_at == point:
        log.warning("%s: injected stall at %s for %gs", who, point, faults.stall_seconds)
        closing.wait(faults.stall_seconds)
        raise Unavailable(f"injected stall at {point}")
    if faults.fail_at == point:
        log.warning("%s: injected failure at %s", who, point)
        raise Unavailable(f"injected failure at {point}")
