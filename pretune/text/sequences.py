"""Per-character labels of sequences (task ``seqtag``): a sequence and an equal-length label string per row, an
optional map from label characters to names, and reverse-complement augmentation for DNA.

Pure functions over strings; `pretune.text.labeled` reads the rows and calls them.
"""

from __future__ import annotations

from pathlib import Path

from pretune.errors import InputError

COMPLEMENT = str.maketrans("ACGTUNacgtun", "TGCAANtgcaan")
STRAND_SWAP = {"+": "-", "-": "+"}  # label characters that name a strand


def parse_label_map(spec: str | dict | None, source: str | Path | None = None) -> dict[str, str]:
    """``"0=non-coding,1=cds+,2=cds-"`` (or a dict) -> {character: name}; an item without ``=`` names itself
    (``"N,+,-"``). Keys are single characters, names distinct and non-empty; the first is the background of the
    segment scores. None or "" gives {} (the characters are the labels, the most frequent one the background)."""
    if not spec:
        return {}
    items = spec.items() if isinstance(spec, dict) else []
    if isinstance(spec, str):
        pairs = []
        for part in spec.split(","):
            key, eq, name = part.partition("=")
            if not eq and len(part.strip()) == 1:
                key, eq, name = part.strip(), "=", part.strip()
            if not eq:
                raise InputError(f"label_map: expected CHAR=NAME items separated by commas, got {part.strip()!r}",
                                 path=source)
            pairs.append((key.strip(), name.strip()))
        items = pairs
    out: dict[str, str] = {}
    for key, name in items:
        if not isinstance(key, str) or len(key) != 1:
            raise InputError(f"label_map: each key must be one label character, got {key!r}", path=source)
        if not isinstance(name, str) or not name:
            raise InputError(f"label_map: empty name for {key!r}", path=source)
        if key in out:
            raise InputError(f"label_map: {key!r} appears twice", path=source)
        if name in out.values():
            raise InputError(f"label_map: the name {name!r} is given to two characters", path=source)
        out[key] = name
    return out


def label_names(sequence: str, labels: str, label_map: dict[str, str], path: Path, line: int) -> list[str]:
    """The label name of every character of `sequence`: checks the lengths match and every label character is
    in `label_map` (when one is given)."""
    if len(labels) != len(sequence):
        raise InputError(f"the sequence has {len(sequence)} characters but its labels {len(labels)}; expected one "
                         "label per character", path, line)
    if not label_map:
        return list(labels)
    bad = set(labels) - set(label_map)
    if bad:
        raise InputError(f"label character(s) {', '.join(map(repr, sorted(bad)))} not in label_map "
                         f"(known: {', '.join(label_map)})", path, line)
    return [label_map[c] for c in labels]


def reverse_complement(sequence: str, tags: list[str] | None, swap: dict[str, str]) -> tuple[str, list[str] | None]:
    """The other strand: the sequence reversed and complemented (A<->T, C<->G, case kept, other letters kept),
    the labels reversed with the names in `swap` exchanged (e.g. {"+": "-", "-": "+"})."""
    seq = sequence.translate(COMPLEMENT)[::-1]
    if tags is None:
        return seq, None
    return seq, [swap.get(t, t) for t in reversed(tags)]


def strand_swap(label_map: dict[str, str], source: str | Path | None = None) -> dict[str, str]:
    """Label names to exchange on the other strand: those of the label characters ``+`` and ``-``, or, when the map
    has neither, names that differ only in a final ``+`` / ``-`` (``cds+`` and ``cds-``)."""
    if not label_map:
        return dict(STRAND_SWAP)
    if "+" in label_map and "-" in label_map:
        return {label_map["+"]: label_map["-"], label_map["-"]: label_map["+"]}
    names = set(label_map.values())
    swap = {n: n[:-1] + STRAND_SWAP[n[-1]] for n in names if n[-1:] in STRAND_SWAP and
            n[:-1] + STRAND_SWAP[n[-1]] in names}
    if not swap:
        raise InputError("reverse_complement needs to know the strands: label characters + and -, or label_map "
                         "names ending in + and - (e.g. 1=cds+,2=cds-)", path=source)
    return swap


def runs(values: list, skip=None) -> list[tuple[int, int, object]]:
    """Maximal runs (start, end_exclusive, value) of equal values, leaving out runs of `skip`."""
    out = []
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            if values[start] != skip:
                out.append((start, i, values[start]))
            start = i
    return out
