"""Files in and out of the use commands: refusing to overwrite an output (or an input), reading a text file's lines."""

from __future__ import annotations

from pathlib import Path

from pretune.errors import InputError


def check_output(path: Path, overwrite: bool, *inputs: Path) -> None:
    """InputError unless `path` may be written: not one of the `inputs`, not a directory, new or `overwrite`."""
    if any(path.resolve() == Path(p).resolve() for p in inputs):
        raise InputError("the output would overwrite the input", path=path)
    if path.is_dir():
        raise InputError("expected a file path, found a directory", path=path)
    if path.exists() and not overwrite:
        raise InputError("already exists; pass --overwrite to replace it", path=path)


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (InputError naming the file when missing or not UTF-8)."""
    try:
        return path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise InputError("file not found", path=path) from None
    except UnicodeDecodeError as e:
        raise InputError(f"expected UTF-8 text (byte {e.start})", path=path) from None
