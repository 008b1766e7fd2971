"""Size-capped logs of the AAA daemons: `python -m vnetlib.aaa.logs --dir D`
checks every log under D (`*.log`, `*.out`) every few seconds and rotates
one that grew past its cap: its content is copied to `NAME.1` (replacing
the previous copy) and the file truncated in place. Copy-and-truncate, not
rename: the daemons (FreeRADIUS's logs and linelog, hostapd, dnsmasq and
wpa_supplicant on stdout) keep their descriptors and write with O_APPEND or
seek to the end first, so they go on at the start of the emptied file.

A line written between the copy and the truncation is lost; readers that
need every line (the VNO's accounting view, the access controller's
decisions) read `NAME.1` before `NAME`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("vnetlib.aaa.logs")

DEFAULT_CAP = 4 << 20
ACCOUNTING_CAP = 64 << 20  # the VNO's accounting records: what it bills from
PATTERNS = ("*.log", "*.out")


def rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def cap_of(path: Path, default: int = DEFAULT_CAP, accounting: int = ACCOUNTING_CAP) -> int:
    return accounting if path.name == "accounting.log" else default


def rotate(path: Path, cap: int) -> bool:
    """Rotate `path` if it is larger than `cap` bytes; True if it did."""
    try:
        if path.stat().st_size <= cap:
            return False
        tmp = path.with_name(f".{path.name}.1.tmp")
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            with open(path, "r+b") as trunc:
                trunc.truncate(0)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        tmp.replace(rotated(path))
    except FileNotFoundError:
        return False
    log.info("rotated %s", path)
    return True


def logs_under(directory: Path) -> Iterator[Path]:
    for pattern in PATTERNS:
        yield from (p for p in directory.rglob(pattern) if p.is_file())


def rotate_all(directory: Path, cap: int = DEFAULT_CAP,
               accounting_cap: int = ACCOUNTING_CAP) -> list[Path]:
    return [p for p in logs_under(directory) if rotate(p, cap_of(p, cap, accounting_cap))]


def lines_with_rotated(path: Path) -> list[str]:
    """Every line of a rotated log, oldest first."""
    out: list[str] = []
    for p in (rotated(path), path):
        with contextlib.suppress(FileNotFoundError):
            out += p.read_text(errors="replace").splitlines()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vnetlib.aaa.logs")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--cap", type=int, default=DEFAULT_CAP, help="bytes per log")
    parser.add_argument("--accounting-cap", type=int, default=ACCOUNTING_CAP,
                        help="bytes of the VNO's accounting log")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between checks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s")
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    while not stopping:
        try:
            rotate_all(args.dir, args.cap, args.accounting_cap)
        except OSError as exc:
            log.warning("rotating logs under %s: %s", args.dir, exc)
        deadline = time.monotonic() + args.every
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
