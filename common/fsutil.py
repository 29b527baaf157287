"""Atomic writes: a crash never leaves a half-written artifact that looks complete.

Files are written to a temporary sibling and renamed into place; directories are built in a
temporary sibling directory and swapped into place when complete (one atomic exchange on Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import VlmEdgeError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _naming_output(e, path)
        raise


_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\] ([^:]*)")  # str() of an OSError, as shutil.Error lists them
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's tofile/save on a full disk (no errno)
_RUST_IO_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust writers (safetensors) report a failed write
# errnos that can only mean a write failed for lack of room or a read-only disk (EFBIG: ulimit -f)
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def _naming_output(e: BaseException, path: Path, tmp: Path | None = None) -> OSError | None:
    """`e` as an OSError with a file name a user can act on (common/cli.py prints it on one line), or
    None for an exception that is not a failed file operation. A name inside the temporary directory
    `tmp` becomes the same name under `path`; a write that failed without any name (f.write or
    numpy's tofile on a full disk) gets `path`. Where the disk is full (DISK_FULL), shutil.Error
    (copytree's list of failures) becomes its first failure, and a Rust library's I/O error
    ("... (os error 28)") an OSError with that errno."""
    if isinstance(e, shutil.Error) and e.args and isinstance(e.args[0], list) and e.args[0]:
        _src, dst, why = e.args[0][0]
        found = _ERRNO_TEXT.match(str(why))
        if found and int(found[1]) in DISK_FULL:
            e = OSError(int(found[1]), found[2], dst)
    elif not isinstance(e, OSError) and isinstance(e, Exception):
        found = _RUST_IO_ERROR.search(str(e))
        if not found or int(found[1]) not in DISK_FULL:
            return None
        e = OSError(int(found[1]), os.strerror(int(found[1])), str(path))
    if not isinstance(e, OSError):
        return None
    if e.errno is None and not _SHORT_WRITE.search(str(e)):  # an OSError(message) of someone else's: as it was
        return None if tmp is not None else e
    if isinstance(e.filename, str) and tmp is not None and Path(e.filename).is_relative_to(tmp):
        e.filename = str(path / Path(e.filename).relative_to(tmp))
    elif not e.filename:
        e.filename = str(path)
    return e


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """JSON with 2-space indent and a trailing newline, keys in insertion order."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `path` only if the block finishes.

    An existing non-empty `path` is refused unless `overwrite` is set; then it is replaced only
    after the new directory is complete, in one atomic exchange of the two names where the
    system has one (Linux renameat2), so `path` is always either the old or the new directory.
    Elsewhere the swap is two renames through a backup that the next call (`recover_directory`)
    puts back if a crash came between them. On an exception the temporary directory is removed
    and `path` is left untouched; temporaries of killed runs are removed by the next one.
    """
    path = Path(path)
    recover_directory(path)
    if path.exists() and not path.is_dir():
        raise VlmEdgeError(f"output path {path} exists and is not a directory; choose another path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise VlmEdgeError(
            f"output directory {path} exists and is not empty; choose another path or overwrite it (--force, or overwrite=True in Python)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".partial"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        failed = _naming_output(e, path, tmp)
        if failed is None:
            raise
        raise failed
    if path.exists() and _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old directory
        return
    backup = _backup_of(path)
    if path.exists():
        os.replace(path, backup)
    os.replace(tmp, path)
    shutil.rmtree(backup, ignore_errors=True)


def _backup_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover_directory(path: str | os.PathLike) -> None:
    """Finish what a killed `atomic_directory` left: put a backup back where the swap did not
    complete, and remove the temporaries of runs that are no longer alive."""
    path = Path(path)
    backup = _backup_of(path)
    if backup.is_dir():
        if path.exists():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):  # another process (a DDP rank) got there first
                os.replace(backup, path)
    if not path.parent.is_dir():
        return
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):
        pid = stale.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    return False  # ENOSYS, EINVAL (a filesystem without it): the two-rename fallback


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints can be many GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


MAX_JSON_BYTES = 64 << 20  # a config, manifest or tokenizer config; real ones are kilobytes to a few MB
MAX_JSON_DEPTH = 64  # real configs nest 3-5 deep; Python's parser itself gives up near 1,000


def json_depth(obj: object) -> int:
    """How deeply `obj` (parsed JSON) nests: 0 for a scalar, 1 for a flat list or object."""
    depth, level = 0, [obj]
    while level:
        level = [v for x in level if isinstance(x, (dict, list)) for v in (x.values() if isinstance(x, dict) else x)]
        depth += 1
    return depth - 1 if depth else 0


def loads_json(text: str | bytes, *, what: str, error: type[VlmEdgeError] = VlmEdgeError,
               max_depth: int = MAX_JSON_DEPTH) -> object:
    """Parse untrusted JSON text: malformed text, a value nested past `max_depth` (which would
    otherwise end in Python's RecursionError) and invalid UTF-8 all become one clear `error`."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise error(f"{what} is not UTF-8 text") from None
    except RecursionError:
        raise error(f"{what} nests deeper than {max_depth} levels; it is not a file vlm-edge wrote or reads") from None
    except ValueError as e:  # an integer of more than 4,300 digits (Python's int-from-text limit)
        raise error(f"{what} is not JSON vlm-edge reads ({e})") from None
    if json_depth(obj) > max_depth:
        raise error(f"{what} nests deeper than {max_depth} levels; it is not a file vlm-edge wrote or reads")
    return obj


def read_json(path: str | os.PathLike, *, what: str, error: type[VlmEdgeError] = VlmEdgeError,
              max_bytes: int = MAX_JSON_BYTES) -> dict:
    """Read a JSON object, turning a missing, oversized, malformed or over-nested file into a clear
    `error`. `what` says what the file is for the message, e.g. "checkpoint config".
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise error(f"{what} {path} is {size >> 20} MiB, over the {max_bytes >> 20} MiB a JSON file may be here; "
                        "it is not a file vlm-edge wrote or reads")
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path} is missing") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a directory, not a JSON file") from None
    obj = loads_json(data, what=f"{what} {path}", error=error)
    if not isinstance(obj, dict):
        raise error(f"{what} {path} must hold a JSON object, found {type(obj).__name__}")
    return obj


NPY_HEADER_ERRORS = (ValueError, TypeError, SyntaxError, OverflowError, KeyError, MemoryError, RecursionError)


def open_npy(path: str | os.PathLike, shape: tuple[int, ...], *, what: str, kinds: str = "f",
             error: type[VlmEdgeError] = VlmEdgeError) -> "np.ndarray":
    """Memory-map an untrusted .npy file read-only, after checking its header: format 1.0 or 2.0,
    a plain numeric dtype of one of `kinds` (numpy kind letters; never objects, which only
    unpickling could read), exactly `shape`, and a file size equal to the header's offset plus
    what the shape and dtype imply. Anything else is one clear `error` naming the file; nothing
    is read or allocated before the checks pass. The array maps the bytes the header was read
    from (no second parse), with the same values `np.load(path, mmap_mode="r")` gives."""
    import numpy as np
    from numpy.lib import format as npy

    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            try:
                version = npy.read_magic(f)
                read_header = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ValueError(f"format version {version[0]}.{version[1]}, which vlm-export never writes")
                file_shape, fortran, dtype = read_header(f)
            except NPY_HEADER_ERRORS as e:
                raise error(f"{what} {path} does not have a valid .npy header ({str(e).splitlines()[0][:200]}); "
                            "re-export the engine") from None
            offset = f.tell()
    except FileNotFoundError:
        raise error(f"{what} {path} is missing; re-export the engine") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a directory, not a .npy file; re-export the engine") from None
    if dtype.kind not in kinds or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise error(f"{what} {path} holds {dtype.str!r} values, not a plain numeric table of kind {kinds!r}; "
                    "re-export the engine")
    if tuple(file_shape) != tuple(shape):
        raise error(f"{what} {path} is {list(file_shape)}, but manifest.json says {list(shape)}; re-export the engine")
    need = offset + dtype.itemsize * int(np.prod(shape, dtype=object))
    if size != need:
        raise error(f"{what} {path} is {size} bytes, but its header ({list(shape)} {dtype.name}) needs {need}: the "
                    "file is truncated or was altered; re-export the engine")
    if need == offset:  # an empty table cannot be mapped
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape), order="F" if fortran else "C")
