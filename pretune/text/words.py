"""The word tokenization of the bundled tagging data, for raw text given to the token tasks (tag / span)."""

from __future__ import annotations

import re

WORD_RE = re.compile(r"\w+(?:-\w+)*|'\w*|[^\w\s]")


def split_words(text: str) -> list[str]:
    """Words of a raw string for the token tasks: runs of word characters (inner hyphens kept), clitics, marks."""
    return WORD_RE.findall(text)
