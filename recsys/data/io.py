"""Writing outputs safely: atomic files and folders, replacing only what recsys wrote, one writer
at a time, and one clear line when the disk is full or the place is not writable.

- ``atomic_path``: write a file under a temporary name beside it, then rename it onto the name.
- ``atomic_dir``: build a folder under a temporary name, then swap it in (the old one is deleted
  only after the new one is in place; see ``_swap_in``).
- ``replace_dir``: ``atomic_dir`` for an output folder of one kind: it replaces a folder only when
  a marker file written by recsys (``.recsys-artifact.json``: kind, format version, the entries
  written) proves the folder holds nothing but that artifact; anything else is refused.
- ``output_lock``: an exclusive lock beside an output, so two commands never write one output.

A crash or kill at any point leaves either the old artifact or the new one under the final name,
never a half-written one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError

MARKER = ".recsys-artifact.json"
MARKER_VERSION = 1

# Errors of the place written to, not of the data: what each means for the user.
_WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the device: free some space or choose another place",
    errno.EDQUOT: "disk quota exceeded: free some space or choose another place",
    errno.EROFS: "read-only file system: choose a writable place",
    errno.EACCES: "permission denied: choose a place you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a place you can write to, or fix its "
                 "permissions",
}


class WriteError(RecsysError):
    """Writing an output failed for a reason of the place (full disk, read-only, no permission);
    ``errno`` says which."""

    def __init__(self, message: str, errno_: int) -> None:
        super().__init__(message)
        self.errno = errno_


def write_advice(errno_: int) -> str:
    """What a write error of the place means and what to do ("no space left ...: free ...")."""
    return _WRITE_ERRORS.get(errno_, os.strerror(errno_))


def describe_os_error(exc: OSError, target: str | os.PathLike[str] | None = None) -> str | None:
    """One line for an OSError of the place (see _WRITE_ERRORS), naming ``target`` (the output
    being written) or else the file the error names; None for any other error."""
    advice = _WRITE_ERRORS.get(exc.errno or 0)
    if advice is None:
        return None
    name = exc.filename if target is None else target
    # A temporary of ours (".NAME.abcd1234.tmp") is never the name to show: its output is.
    if name is not None and target is None:
        name = _TEMP_NAME.sub(r"\1", os.fspath(name))
    return f"{name}: {advice}" if name is not None else advice[0].upper() + advice[1:]


_TEMP_NAME = re.compile(r"(?:^|(?<=/))\.(.+)\.[a-z0-9_]{8}\.tmp$")


def _write_error(exc: OSError, target: Path) -> WriteError | None:
    # The output, its temporaries, lock and partial folder (".NAME.*") are the output; an error
    # that names another file (a folder above it, a file read meanwhile) is about that file.
    ours = exc.filename is None or any(
        part == target.name or part.startswith(f".{target.name}.")
        for part in Path(os.fspath(exc.filename)).parts)
    line = describe_os_error(exc, target if ours else None)
    return None if line is None else WriteError(line, exc.errno or 0)


@contextlib.contextmanager
def writing(target: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an OSError of the place (full disk, read-only, no permission) raised inside into a
    WriteError naming the output ``target``."""
    target = Path(target)
    try:
        yield
    except OSError as exc:
        error = _write_error(exc, target)
        if error is None:
            raise
        raise error from exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    tmp_path: Path | None = None
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmp_path = Path(tmp)
            # mkstemp creates 0600; give the final file the permissions a plain open() would.
            tmp_path.chmod(0o666 & ~_umask())
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path``.

    The caller owns ``path`` (see ``replace_dir`` for outputs a user names). Under the lock,
    temporaries of earlier killed runs are removed first (and an old folder that a failed swap
    left aside is put back)."""
    path = Path(path)
    with output_lock(path, wait=True):
        tmp: Path | None = None
        try:
            with writing(path):
                clean_stale(path)
                tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp",
                                            dir=path.parent))
                tmp.chmod(0o777 & ~_umask())
                yield tmp
                _swap_in(tmp, path)
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _aside(path: Path) -> Path:
    return path.parent / f".{path.name}.aside"


def _swap_in(new: Path, path: Path) -> None:
    """Put the folder ``new`` under the name ``path``, and the old folder (if any) out of the way:
    under ``new``'s name for the caller to delete, or deleted here. With Linux's atomic exchange
    both names swap in one step; elsewhere the old folder is renamed aside, the new one in, and
    the old one back if that fails, so a failure at any step keeps the old artifact."""
    if not os.path.lexists(path):
        os.replace(new, path)
        return
    if _exchange(new, path):
        return
    aside = _aside(path)
    os.replace(path, aside)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(aside, path)
        raise
    # The new artifact is in place: a failure from here on only leaves the old one aside,
    # which the next write under this name removes.
    shutil.rmtree(aside, ignore_errors=True)


def clean_stale(path: str | os.PathLike[str]) -> None:
    """Remove what killed runs left beside ``path``: temporaries (mkstemp's and mkdtemp's 8
    random characters) and an old folder renamed aside, which is put back if ``path`` is missing.
    Only under ``output_lock(path)``: no other writer's temporaries are live then."""
    path = Path(path)
    aside = _aside(path)
    if aside.is_dir():
        if not os.path.lexists(path):
            os.replace(aside, path)
        else:
            shutil.rmtree(aside)
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    stale = re.compile(rf"^\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp$")
    for entry in os.scandir(path.parent):
        if stale.match(entry.name):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` atomically (Linux renameat2 RENAME_EXCHANGE); False where
    the system or the file system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    import ctypes

    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


_RENAMEAT2: list[Any] = []


def _renameat2() -> Any:
    if not _RENAMEAT2:
        function = None
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                function = ctypes.CDLL(None, use_errno=True).renameat2
                function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                     ctypes.c_char_p, ctypes.c_uint]
                function.restype = ctypes.c_int
            except (AttributeError, OSError):  # glibc before 2.28, musl
                function = None
        _RENAMEAT2.append(function)
    return _RENAMEAT2[0]


# -- outputs recsys replaces: only its own -----------------------------------------------------


def refuse_symlink(path: str | os.PathLike[str], flag: str = "--out") -> None:
    """An output given as a symbolic link is refused: replacing it would replace the link, not
    what it points to, and writing through it could replace a folder elsewhere."""
    path = Path(path)
    if path.is_symlink():
        raise RecsysError(f"{flag} {path} is a symbolic link (to {os.readlink(path)}); give the "
                          "real path, or remove the link")


def read_marker(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker recsys wrote into ``folder`` (kind, format_version, files), or None."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("kind"), str):
        return None
    return marker


def write_marker(folder: str | os.PathLike[str], kind: str, format_version: int,
                 files: list[str] | None = None) -> None:
    """Mark ``folder`` as a recsys artifact of ``kind``; ``files``: the entries it consists of
    (None: a folder that grows, whose own entries only recsys replaces, such as a comparison)."""
    write_json(Path(folder) / MARKER, {"kind": kind, "format_version": format_version,
                                       "marker_version": MARKER_VERSION, "files": files})


def check_replaceable(path: str | os.PathLike[str], kind: str, *, what: str,
                      flag: str = "--out", legacy: Callable[[Path], bool] | None = None) -> None:
    """Refuse (one line) to replace ``path`` unless it is new, an empty folder, or a folder whose
    marker says it is a ``kind`` and holds nothing but the entries the marker lists.
    ``legacy(path)``: whether an unmarked folder is one written before markers existed."""
    path = Path(path)
    refuse_symlink(path, flag)
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise RecsysError(f"{flag} {path}: exists and is not a folder; choose a new or empty "
                          "folder (recsys replaces only a folder it wrote)")
    entries = sorted(os.listdir(path))
    if not entries:
        return
    marker = read_marker(path)
    if marker is not None and marker["kind"] != kind:
        raise RecsysError(f"{flag} {path}: is a recsys {marker['kind']}, not a {what}; choose a "
                          "new or empty folder")
    if marker is not None:
        files = marker.get("files")
        extra = [e for e in entries if e != MARKER and files is not None and e not in files]
        if not extra:
            return
    elif legacy is not None and legacy(path):
        return
    else:
        extra = entries
    shown = ", ".join(e + ("/" if (path / e).is_dir() else "") for e in extra[:3])
    more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
    raise RecsysError(f"{flag} {path}: exists and is not a {what} that recsys wrote (it holds "
                      f"{shown}{more}); choose a new or empty folder: recsys replaces only what "
                      "it wrote")


@contextlib.contextmanager
def replace_dir(path: str | os.PathLike[str], kind: str, *, what: str, format_version: int,
                flag: str = "--out", legacy: Callable[[Path], bool] | None = None
                ) -> Iterator[Path]:
    """``atomic_dir`` for an output folder of ``kind``: refuse a folder that is not one
    (``check_replaceable``), and mark the new one with the entries written into it."""
    path = Path(path)
    with output_lock(path, wait=True):
        check_replaceable(path, kind, what=what, flag=flag, legacy=legacy)
        with atomic_dir(path) as tmp:
            yield tmp
            write_marker(tmp, kind, format_version, sorted(os.listdir(tmp)))


def check_replaceable_file(path: str | os.PathLike[str], *, what: str, ours: Callable[[Path], bool],
                           flag: str = "--out") -> None:
    """Refuse (one line) to replace an existing file unless ``ours(path)`` recognises it as a
    ``what`` written by recsys; a directory or a symbolic link is refused too."""
    path = Path(path)
    refuse_symlink(path, flag)
    if path.is_dir():
        raise RecsysError(f"{flag} {path} is a directory; give a file name")
    if path.exists() and not ours(path):
        raise RecsysError(f"{flag} {path}: exists and is not a {what} that recsys wrote; choose "
                          "another name, or remove the file if it may go")


def table_columns(path: str | os.PathLike[str]) -> list[str] | None:
    """The column names of a CSV (its header) or Parquet file, or None when it is neither."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        import csv

        with open(path, encoding="utf-8", newline="") as f:
            return next(csv.reader([f.readline()]), None)
    except (OSError, ValueError, UnicodeDecodeError):  # pyarrow's ArrowInvalid is a ValueError
        return None


def has_columns(*columns: str) -> Callable[[Path], bool]:
    """A recogniser for ``check_replaceable_file``: a table with exactly these columns."""
    return lambda path: table_columns(path) == list(columns)


# -- one writer at a time ----------------------------------------------------------------------

_HELD: dict[str, int] = {}  # locks this process holds (re-entered by nested writers) -> depth


def lock_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def output_lock(path: str | os.PathLike[str], command: str = "recsys", *, wait: bool = False,
                flag: str = "--out") -> Iterator[None]:
    """Hold an exclusive lock on the output ``path`` (``.NAME.lock`` beside it, removed when
    released). Another process holding it: wait (``wait``), or one line naming its pid. The
    lock is re-entrant within a process, so a command and the writer it calls share it."""
    path = Path(path)
    # One key per file whatever the spelling (relative, through a linked folder): flock on a
    # second descriptor of a lock this process holds would wait for itself.
    key = os.path.join(os.path.realpath(path.parent), path.name)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    import fcntl

    lock = lock_path(path)
    with writing(path):
        lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").split()
                os.close(fd)
                pid, who = (holder + ["?", "command"])[:2] if holder else ("?", "command")
                raise RecsysError(f"{path} is being written by another recsys {who} (pid {pid}); "
                                  f"wait for it to finish, or choose another {flag}") from None
            # The holder before us removes the file when it is done: if it did so after we
            # opened it, our lock is on a file nobody else sees; lock the current one.
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {command}\n".encode())
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
