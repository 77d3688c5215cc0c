"""Files into the use commands: reading a text file's lines."""

from __future__ import annotations

from pathlib import Path

from pretune.errors import InputError
from pretune.files import read_input


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (InputError naming the file when missing or not UTF-8)."""
    try:
        return read_input(path).decode("utf-8").removeprefix("\ufeff").split("\n")
    except UnicodeDecodeError as e:
        raise InputError(f"expected UTF-8 text (byte {e.start})", path=path) from None
