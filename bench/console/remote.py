"""The bench's console client in a process of its own (spawned: the
players' process has threads)."""

from __future__ import annotations

import multiprocessing

from bench.console.__main__ import Figures, _Timed, console_figures
from vnetlib.players.pki import Credentials


def run(out: multiprocessing.Queue[Figures | str], url: str, credentials: Credentials,
        vno_name: str, vnet: str, setups: int, rounds: int, pause: float) -> None:
    """`console_figures` here; the figures (or why not) into `out`."""
    try:
        sp = _Timed(url, credentials, 300.0, vno_name=vno_name)
        out.put(console_figures(sp, vnet, setups, rounds, pause))
    except BaseException as exc:
        out.put(f"{type(exc).__name__}: {exc}")
        raise
