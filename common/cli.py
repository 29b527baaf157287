"""What every vlm-edge command line shares: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import errno
import re
import sys
import time
from typing import Callable

from .errors import VlmEdgeError
from .extras import missing_extra
from .fsutil import atomic_write_json


# Failed writes a user fixes by freeing space or writing elsewhere: errno -> (what happened, what to do).
# EFBIG is a per-process file size limit (ulimit -f), which stops a write like a full disk does.
_FREE_SPACE = "free space there or choose another output path (-o)"
WRITE_ERRORS = {
    errno.ENOSPC: ("no space left on the device", _FREE_SPACE),
    errno.EDQUOT: ("the disk quota is used up", _FREE_SPACE),
    errno.EFBIG: ("the file size limit (ulimit -f) is reached", "raise the limit or choose another output path (-o)"),
    errno.EROFS: ("the file system is read-only", "choose another output path (-o)"),
    errno.EACCES: ("permission denied", "check its permissions or choose another output path (-o)"),
}


_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's tofile/save when the disk stops taking bytes


def write_error_message(e: OSError) -> str | None:
    """One line for an OSError in WRITE_ERRORS or a short write (None for others): the path, what
    happened, what to do."""
    if e.errno is None and e.args and _SHORT_WRITE.fullmatch(str(e.args[0])):
        what, advice = f"a write stopped short ({e.args[0]}): the disk is full or a file size limit is reached", _FREE_SPACE
    elif e.errno in WRITE_ERRORS:
        what, advice = WRITE_ERRORS[e.errno]
    else:
        return None
    where = f"{e.filename}: " if e.filename else "writing the output: "
    return f"{where}{what}; {advice}"


def run(prog: str, action: Callable[[], object]) -> int:
    """Run `action`; a VlmEdgeError prints `prog: error: message` (no traceback) and returns 2, and
    so does a missing optional dependency (the message names the extra that installs it) and a
    write that the disk refused (full, over quota or a file size limit, read-only, no permission)."""
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
    except OSError as e:
        message = write_error_message(e)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
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
