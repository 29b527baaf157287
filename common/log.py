"""One logger tree, `vlm_edge.*`; CLIs call `setup_logging()` in main(), libraries never do."""

from __future__ import annotations

import logging
import sys


def get_logger(name: str) -> logging.Logger:
    """Logger for a module: pass `__name__` (already `vlm_edge.<pkg>.<module>`)."""
    return logging.getLogger(name if name.startswith("vlm_edge") else f"vlm_edge.{name}")


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at emit time (it may be redirected after setup)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def setup_logging(verbose: bool = False) -> None:
    """Log `vlm_edge.*` records to stderr as `[vlm-edge] message`."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("[vlm-edge] %(message)s"))
    root = logging.getLogger("vlm_edge")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
