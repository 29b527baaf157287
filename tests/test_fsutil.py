"""Directory swaps: `atomic_directory` never leaves its output missing or half-written, also when
the process is killed at a random moment, and the next run cleans up what a killed one left."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from vlm_edge.common.fsutil import atomic_directory, recover_directory

WRITER = """
import sys
from pathlib import Path
from vlm_edge.common.fsutil import atomic_directory
out, n = Path(sys.argv[1]), 0
print("ready", flush=True)
while True:
    n += 1
    with atomic_directory(out, overwrite=True) as tmp:
        for i in range(20):
            (tmp / f"part{i}").write_bytes(bytes(4096))
        (tmp / "complete").write_text(str(n))
"""


def _complete(path: Path) -> bool:
    return (path / "complete").is_file() and len(list(path.glob("part*"))) == 20


def test_overwrite_swaps_in_one_step_and_leaves_nothing_behind(tmp_path):
    out = tmp_path / "engine"
    with atomic_directory(out) as tmp:
        (tmp / "a").write_text("old")
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "a").write_text("new")
    assert (out / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"]


def test_a_kill_at_any_moment_leaves_the_old_or_the_new_directory(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out) as tmp:  # an existing output that every swap replaces
        for i in range(20):
            (tmp / f"part{i}").write_bytes(bytes(4096))
        (tmp / "complete").write_text("0")
    rng = random.Random(0)
    for _ in range(15):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert _complete(out), sorted(p.name for p in out.iterdir()) if out.exists() else "missing"
    recover_directory(out)  # what the next run does first: the killed runs' temporaries go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_interrupted_two_rename_swap_is_completed(tmp_path):
    """Where no atomic exchange exists, a kill between the two renames leaves the old directory
    under its backup name and the output path missing: the next call puts it back."""
    out = tmp_path / "ckpt"
    backup = tmp_path / ".ckpt.old"
    backup.mkdir()
    (backup / "state").write_text("last complete checkpoint")
    recover_directory(out)
    assert (out / "state").read_text() == "last complete checkpoint" and not backup.exists()


def test_stale_temporaries_of_dead_runs_go_and_live_ones_stay(tmp_path):
    out = tmp_path / "engine"
    dead = tmp_path / ".engine.999999999.x1.partial"  # above any pid_max: that process is gone
    live = tmp_path / f".engine.{os.getppid()}.x2.partial"  # the test runner's parent is alive
    other = tmp_path / ".other.999999999.x3.partial"
    for d in (dead, live, other):
        d.mkdir()
    with atomic_directory(out) as tmp:
        (tmp / "a").write_text("x")
    assert not dead.exists() and live.exists() and other.exists()


def test_linux_swaps_two_directories_in_one_call(tmp_path):
    from vlm_edge.common.fsutil import _exchange

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "which").write_text("a")
    (b / "which").write_text("b")
    if sys.platform.startswith("linux"):
        assert _exchange(a, b)  # renameat2(RENAME_EXCHANGE): no moment without either name
        assert (a / "which").read_text() == "b" and (b / "which").read_text() == "a"
