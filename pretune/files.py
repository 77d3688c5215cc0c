"""Files written so that a crash never leaves half of one, and the readers that go with them.

One atomic writer (`write_atomic`: a temporary file beside the target, fsync, rename) serves every text, JSON and
output file; `write_dir_atomic` does the same for a whole directory (checkpoints). `read_metrics` is the one reader of
a run's `metrics.jsonl`.

Input side: `input_file` is the one check every reader makes before it opens a file (it exists, it is a regular file:
never a FIFO that would block, a device that never ends, a directory); `input_lines` and `read_input` read one
through it, decompressing `.gz`, with bounds on a line and on a whole file (a clear error instead of growing to
gigabytes on `/dev/zero` or a gzip bomb). The bounds can be raised with PRETUNE_MAX_LINE_BYTES /
PRETUNE_MAX_FILE_BYTES / PRETUNE_MAX_STREAM_BYTES.

Output directories: `lock_dir` holds an advisory lock (fcntl.flock on `.pretune.lock` inside) for the command that
writes one, so a second writer is refused at once with the holder's pid.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from pretune.errors import InputError

METRICS_LOG = "metrics.jsonl"
MAX_LINE_BYTES = 16 << 20  # one line (a document of a .txt / .jsonl corpus, a CSV row, a JSON line)
MAX_FILE_BYTES = 4 << 30  # one file read whole into memory (labeled sets, configs, tokenizers), after gunzip
MAX_STREAM_BYTES = 1 << 40  # one file read as a stream (a corpus), after gunzip


def _limit(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value else default
    except ValueError:
        raise InputError(f"{name} must be a number of bytes, got {value!r}") from None


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n:,} bytes"


def input_file(path: str | Path, what: str = "file") -> Path:
    """`path` if it names a regular file; otherwise an InputError saying what it is instead (missing, a directory,
    a FIFO, a device, a socket). Readers call it before opening, so nothing blocks on a FIFO or reads a device."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError("file not found", path=path) from None
    except OSError as e:
        raise InputError(f"cannot read {what}: {e.strerror or e}", path=path) from None
    if stat.S_ISREG(mode):
        return path
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "not a regular file")
    raise InputError(f"is {kind}; expected a regular {what}", path=path)


def _open_input(path: Path, what: str):
    input_file(path, what)
    try:
        if path.name.lower().endswith(".gz"):
            return gzip.open(path, "rb")
        return open(path, "rb")
    except PermissionError:
        raise InputError(f"{what} is not readable (permission denied)", path=path) from None
    except OSError as e:
        raise InputError(f"cannot open {what}: {e.strerror or e}", path=path) from None


def _read_error(path: Path, e: BaseException, line: int | None) -> InputError:
    if isinstance(e, (gzip.BadGzipFile, EOFError, zlib.error)):
        return InputError(f"corrupt or truncated gzip data ({e})", path=path, line=line)
    return InputError(f"read error: {getattr(e, 'strerror', None) or e}", path=path, line=line)


def input_lines(path: str | Path, what: str = "file") -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes with the terminator) of each line of a regular file (gunzipped when `.gz`),
    streamed. A line over PRETUNE_MAX_LINE_BYTES (16 MiB) or a file over PRETUNE_MAX_STREAM_BYTES (1 TiB) after
    decompression is an InputError naming the limit."""
    path = Path(path)
    max_line = _limit("PRETUNE_MAX_LINE_BYTES", MAX_LINE_BYTES)
    max_total = _limit("PRETUNE_MAX_STREAM_BYTES", MAX_STREAM_BYTES)
    with _open_input(path, what) as f:
        lineno, total = 0, 0
        while True:
            try:
                raw = f.readline(max_line + 1)
            except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as e:
                raise _read_error(path, e, lineno + 1) from None
            if not raw:
                return
            lineno += 1
            total += len(raw)
            if len(raw) > max_line:
                raise InputError(f"line longer than {_size(max_line)} (the limit on one line; raise it with "
                                 "PRETUNE_MAX_LINE_BYTES): not a text file?", path=path, line=lineno)
            if total > max_total:
                raise InputError(f"more than {_size(max_total)} of data (the limit on one file; raise it with "
                                 "PRETUNE_MAX_STREAM_BYTES)", path=path, line=lineno)
            yield lineno, raw


def read_input(path: str | Path, what: str = "file") -> bytes:
    """The bytes of a regular file (gunzipped when `.gz`), at most PRETUNE_MAX_FILE_BYTES (4 GiB) of them: more is
    an InputError naming the limit, raised before memory grows further."""
    path = Path(path)
    limit = _limit("PRETUNE_MAX_FILE_BYTES", MAX_FILE_BYTES)
    with _open_input(path, what) as f:
        try:
            data = f.read(limit + 1)
        except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as e:
            raise _read_error(path, e, None) from None
    if len(data) > limit:
        raise InputError(f"more than {_size(limit)} of data (the limit on a file read whole; raise it with "
                         "PRETUNE_MAX_FILE_BYTES)", path=path)
    return data


def write_atomic(path: str | Path, write: Callable[[IO], None], binary: bool = False) -> None:
    """Create or replace `path` with what `write(file)` writes, through a temporary file beside it, fsync and an
    atomic rename: readers (and a crash) see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    write_atomic(path, lambda f: f.write(text))


def write_json(path: Path, data) -> None:
    """Write JSON (indented) atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


PAUSE_ENV = "PRETUNE_TEST_CHECKPOINT_PAUSE"  # "stage=seconds": crash tests kill the process inside a write


def _pause(stage: str, replacing: bool) -> None:
    """Test hook: sleep at `stage` (begin | filled | swap) of a write that replaces a directory, when PAUSE_ENV
    asks for it."""
    want = os.environ.get(PAUSE_ENV)
    if replacing and want and want.split("=")[0] == stage:
        time.sleep(float(want.split("=")[1]))


LOCK_FILE = ".pretune.lock"  # in every output directory a command writes; holds the writer's pid
_LOCKS: dict[str, int] = {}  # resolved directory -> the open, flock-ed lock file of this process


def lock_dir(directory: str | Path) -> bool:
    """Hold an advisory lock (fcntl.flock on `directory`/.pretune.lock) until `release_locks` or the process ends.
    A directory another process holds is refused at once, naming its pid. Re-entrant within one process.
    Returns whether this call created the lock file (`unlock_dir` removes it again when refusing the directory)."""
    directory = Path(directory)
    key = str(directory.resolve())
    path = directory / LOCK_FILE
    if key in _LOCKS:
        try:
            if os.stat(path).st_ino == os.fstat(_LOCKS[key]).st_ino:
                return False  # held, and still the directory's lock file
        except OSError:
            pass
        os.close(_LOCKS.pop(key))  # the directory was removed and made again: lock the new one
    directory.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise InputError(f"cannot create the lock file {LOCK_FILE}: {e.strerror or e}", path=directory) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise InputError(f"another pretune process (pid {holder}) is writing this directory; wait for it to end "
                         "or choose another --out", path=directory) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    _LOCKS[key] = fd
    return created


def unlock_dir(directory: str | Path, remove: bool) -> None:
    """Release this process's lock on `directory`; `remove`: delete the lock file too (a directory just refused)."""
    fd = _LOCKS.pop(str(Path(directory).resolve()), None)
    if fd is not None:
        if remove:
            (Path(directory) / LOCK_FILE).unlink(missing_ok=True)
        os.close(fd)


def release_locks() -> None:
    """Release every directory lock this process holds (the CLI does at the end of each command)."""
    for fd in _LOCKS.values():
        os.close(fd)  # closing the file releases its flock
    _LOCKS.clear()


def dir_entries(directory: Path) -> list[Path]:
    """What a directory holds, less its lock file."""
    return [p for p in directory.iterdir() if p.name != LOCK_FILE] if directory.is_dir() else []


def recover_dir(target: Path) -> None:
    """Undo a swap cut short by a crash: `target` gone but its previous version still at `.target.old`."""
    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    if not target.exists() and old.is_dir():
        os.replace(old, target)


def write_dir_atomic(target: Path, fill: Callable[[Path], None]) -> None:
    """Create `target` with `fill(tmp_dir)`, then swap it in. The old `target` survives until the new one is whole.

    A crash at any point leaves `target` or `.target.old` complete (`recover_dir` / `resolve` find the latter).
    An OSError (disk full, permissions) becomes an InputError naming `target`; the old `target` stays in place."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    old = target.with_name(f".{target.name}.old")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        replacing = target.exists() or old.exists()
        _pause("begin", replacing)
        fill(tmp)
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        _pause("filled", replacing)
        recover_dir(target)
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        _pause("swap", replacing)
        os.replace(tmp, target)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        recover_dir(target)
        reason = (e.strerror if isinstance(e, OSError) else None) or str(e).splitlines()[0]
        if isinstance(e, RuntimeError) or (isinstance(e, OSError) and e.errno in (None, errno.EIO)):
            reason += _free_space(target.parent)  # torch / safetensors hide ENOSPC: say how full the disk is
        raise InputError(f"cannot write {target.name}/: {reason}; the previous {target.name}/ (if any) is left "
                         "as it was", path=target) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def _free_space(directory: Path) -> str:
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return ""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if free >= scale:
            return f" ({free / scale:.1f} {unit} free on its disk)"
    return f" ({free} bytes free on its disk)"


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_filename(name: str, max_len: int = 80) -> str:
    """A file name made from data (a label, a task name) that stays inside its directory: characters other than
    letters, digits, `.`, `_` and `-` become `_`, leading dots go, and a changed name gets a short hash of the
    original so that `a/b` and `a_b` stay distinct."""
    clean = _UNSAFE.sub("_", name).lstrip(".")[:max_len] or "_"
    if clean != name:
        clean += "-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return clean


def child_path(root: str | Path, name: str) -> Path:
    """root / name, refusing any `name` that would leave `root` (absolute, `..`, separators, empty)."""
    root = Path(root)
    candidate = (root / name).resolve()
    if not name or name != Path(name).name or name in (".", "..") or candidate.parent != root.resolve():
        raise InputError(f"refusing the file name {name!r}: it would leave the output directory", path=root)
    return root / name


def read_json(path: Path) -> dict:
    """The JSON object in a file; InputError for anything else (missing, not regular, not UTF-8, not JSON)."""
    try:
        data = json.loads(read_input(path).decode("utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg}", path=path, line=e.lineno) from None
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", path=path) from None
    except RecursionError:
        raise InputError("invalid JSON: nested too deeply", path=path) from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", path=path)
    return data


def check_output(path: Path, overwrite: bool, *inputs: Path) -> None:
    """InputError unless `path` may be written: not one of the `inputs`, not a directory, new or `overwrite`."""
    if any(path.resolve() == Path(p).resolve() for p in inputs):
        raise InputError("the output would overwrite the input", path=path)
    if path.is_dir():
        raise InputError("expected a file path, found a directory", path=path)
    if path.exists() and not overwrite:
        raise InputError("already exists; pass --overwrite to replace it", path=path)


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a training log: `path` is a run directory (its metrics.jsonl) or the log itself. A missing
    log is empty; a line that is not JSON (a write cut short by a crash) is skipped."""
    path = Path(path)
    log = path / METRICS_LOG if path.is_dir() else path
    if not log.is_file():
        return []
    records = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records
