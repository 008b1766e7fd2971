"""Output for people (text, progress on stderr) and for scripts (--json)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


class Progress:
    """Timestamped progress lines on stderr, so stdout stays clean for --json."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.start
            print(f"[{elapsed:6.2f}s] {message}", file=sys.stderr, flush=True)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)
