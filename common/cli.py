"""What every vlm-edge command line shares: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import sys
import time
from typing import Callable

from .errors import VlmEdgeError
from .extras import missing_extra
from .fsutil import atomic_write_json


def run(prog: str, action: Callable[[], object]) -> int:
    """Run `action`; a VlmEdgeError prints `prog: error: message` (no traceback) and returns 2, and
    so does a missing optional dependency (the message names the extra that installs it)."""
    try:
        try:
            action()
        except ModuleNotFoundError as e:
            err = missing_extra(e, prog)
            if err is None:
                raise
            raise err from None
    except VlmEdgeError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


def emit_report(table: str, result: object, json_path: str | None) -> None:
    """Print a measurement's table; with `json_path`, also save the result there (atomically)."""
    print(table)
    if json_path:
        atomic_write_json(json_path, result)


class LayerProgress:
    """One self-overwriting stderr line per unit of work (a layer), with the elapsed time and ETA."""

    def __init__(self, label: str = "layer") -> None:
        self.label = label
        self.start = time.time()

    def __call__(self, done: int, total: int) -> None:
        if done == 0:  # a pass starts: its clock starts here, not when the work before it did
            self.start = time.time()
            return
        elapsed = time.time() - self.start
        eta = elapsed / max(done, 1) * (total - done)
        print(f"\r  {self.label} {done}/{total}  {elapsed:.1f}s  eta {eta:.1f}s", end="\n" if done == total else "",
              file=sys.stderr, flush=True)
        if done == total:
            self.start = time.time()  # the next pass (e.g. another graph) starts its own clock
