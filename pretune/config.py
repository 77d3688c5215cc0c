"""Configs: dataclasses filled from a TOML file and command-line flags, validated at load time.

A TOML file has one table per section (`[model]`, `[train]`, ...); every key is also a flag (`--hidden-size 256`).
Field names are unique across the sections of one command, so flags need no section prefix.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pretune.errors import InputError
from pretune.files import read_input

# The one list of settings that never change a result (what a fingerprint or a resume check ignores), and the
# settings a resumed run may change besides them (budgets and how a global batch is split over ranks).
NEUTRAL_KEYS = ("progress", "device", "log_every", "save_every")
RESUME_KEYS = NEUTRAL_KEYS + ("max_steps", "eval_every", "eval_batches", "stop_after", "batch_size", "grad_accum",
                              "fsdp")


def without_keys(record: dict[str, dict], keys: tuple[str, ...]) -> dict[str, dict]:
    """{section: {key: value}} less `keys` in every section."""
    return {s: {k: v for k, v in vals.items() if k not in keys} for s, vals in record.items()}


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = read_input(path, "config file").decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"config is not UTF-8 text (byte {e.start})", path=path) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        where = re.search(r"\(at line (\d+), column (\d+)\)", str(e))  # Python < 3.14 has no e.lineno
        line = getattr(e, "lineno", None) or (int(where.group(1)) if where else None)
        msg = str(e).split(" (at line")[0] + (f" (column {where.group(2)})" if where else "")
        raise InputError(f"invalid TOML: {msg}", path=path, line=line) from None


def close_match(key: str, known) -> str | None:
    """The known key `key` most likely meant: a close spelling, else one its words start with (lr_rate -> lr)."""
    close = difflib.get_close_matches(key, list(known), n=1)
    if close:
        return close[0]
    words = [k for k in known if key.startswith(k + "_") or key.endswith("_" + k)]
    return max(words, key=len) if words else None


def _did_you_mean(key: str, known: list[str]) -> str:
    close = close_match(key, known)
    return f"; did you mean {close!r}?" if close else f"; known keys: {', '.join(sorted(known))}"


def _base_type(tp: Any) -> tuple[type, bool]:
    """(the non-None type of a field, whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return (origin or tp), False


def _coerce(value: Any, tp: Any, where: str, path) -> Any:
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise InputError(f"{where} must not be empty", path=path)
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif base is str:
        if isinstance(value, str):
            return value
    elif base in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            (item_tp,) = typing.get_args(tp) or (str,)
            return [_coerce(v, item_tp, where, path) for v in value]
    else:
        return value
    raise InputError(f"{where} must be of type {getattr(base, '__name__', base)}, got {value!r}", path=path)


def coerce_fields(cls: type, data: dict, path=None, section: str | None = None) -> dict:
    """Check a dict against dataclass `cls`: unknown keys get a did-you-mean, values are converted to field types."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"[{section}] {key}" if section else key
        if key not in hints:
            raise InputError(f"unknown key {where!r}{_did_you_mean(key, known)}", path=path)
        kwargs[key] = _coerce(value, hints[key], where, path)
    return kwargs


def bounds(ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           **metadata: Any) -> dict[str, Any]:
    """Field metadata for a number: the range it must lie in (checked at load time by `check_numbers`), plus any
    other metadata (help, flag). `field(default=0.9, metadata=bounds(ge=0, lt=1, help="..."))`."""
    return {**metadata, "bounds": (ge, gt, le, lt)}


def _range_text(ge, gt, le, lt) -> str:
    def n(x) -> str:
        return str(x) if isinstance(x, int) else f"{x:g}"

    if (ge is not None or gt is not None) and (le is not None or lt is not None):
        lo, hi = ("[", ge) if ge is not None else ("(", gt), ("]", le) if le is not None else (")", lt)
        return f"in {lo[0]}{n(lo[1])}, {n(hi[1])}{hi[0]}"
    if ge is not None:
        return f">= {n(ge)}"
    if gt is not None:
        return f"> {n(gt)}"
    return f"<= {n(le)}" if le is not None else f"< {n(lt)}"


def check_numbers(obj: Any, source: str | Path | None = None, prefix: str = "") -> None:
    """InputError naming the setting unless every number of dataclass `obj` is finite (floats: no nan / inf) and in
    the range its field's `bounds` metadata gives. One check for every config section (`from_dict` runs it)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise InputError(f"{prefix}{f.name} must be a finite number, got {v}", path=source)
            rng = f.metadata.get("bounds")
            if rng is None:
                continue
            ge, gt, le, lt = rng
            if ((ge is not None and v < ge) or (gt is not None and v <= gt) or (le is not None and v > le)
                    or (lt is not None and v >= lt)):
                raise InputError(f"{prefix}{f.name} must be {_range_text(ge, gt, le, lt)}, got {v!r}", path=source)


def from_dict(cls: type, data: dict, path=None, section: str | None = None):
    """Build dataclass `cls` from a dict (see coerce_fields), check its numbers (finite, within their field's
    `bounds`), then run its validate() if it has one."""
    obj = cls(**coerce_fields(cls, data, path, section))
    check_numbers(obj, path, f"[{section}] " if section else "")
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(str(path) if path is not None else None)
    return obj


def to_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, *classes: type) -> None:
    """One flag per dataclass field, defaulting to None (= take the config file's value or the default)."""
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("flag") is False:
                continue
            base, _ = _base_type(hints[f.name])
            kw: dict[str, Any] = {"default": None, "dest": f.name}
            if base is bool:
                kw["action"] = argparse.BooleanOptionalAction
            else:
                kw["metavar"] = base.__name__.upper() if isinstance(base, type) else "VALUE"
            kw["help"] = f.metadata.get("help", argparse.SUPPRESS if f.metadata.get("hidden") else None)
            parser.add_argument(to_flag(f.name), **kw)


def merge(file_values: dict, args: argparse.Namespace, sections: dict[str, type], path=None) -> dict[str, dict]:
    """Per section: values from the TOML table, overridden by flags that were given.

    `file_values` is the parsed TOML; top-level keys belong to the first section (so flat files work too)."""
    first = next(iter(sections))
    out: dict[str, dict] = {name: {} for name in sections}
    owner = {f.name: name for name, cls in sections.items() for f in dataclasses.fields(cls)}
    for key, value in file_values.items():
        if isinstance(value, dict) and key in sections:
            out[key].update(value)
        elif isinstance(value, dict):
            raise InputError(f"unknown section [{key}]{_did_you_mean(key, list(sections))}", path=path)
        elif key in owner:
            out[owner[key]][key] = value
        else:
            out[first][key] = value  # from_dict reports it with a did-you-mean
    for key, section in owner.items():
        value = getattr(args, key, None)
        if value is not None:
            out[section][key] = value
    return out


def load_sections(config_path: str | None, args: argparse.Namespace, sections: dict[str, type],
                  defaults: Callable[[dict[str, dict]], dict[str, dict]] | None = None) -> dict[str, Any]:
    """TOML file (optional) + flags -> one validated dataclass per section. `defaults(merged)`: per section, values
    under the file's and the flags' (e.g. a model-size preset), chosen from what was given."""
    values = load_toml(config_path) if config_path else {}
    merged = merge(values, args, sections, config_path)
    if defaults is not None:
        under = defaults(merged)
        merged = {name: {**under.get(name, {}), **vals} for name, vals in merged.items()}
    return {name: from_dict(cls, merged[name], config_path, name) for name, cls in sections.items()}


def to_toml(sections: dict[str, Any]) -> str:
    """Write resolved sections (dataclasses) back as TOML (used to record the config a run used)."""
    return toml_tables({name: dataclasses.asdict(obj) for name, obj in sections.items()})


def toml_tables(tables: dict[str, dict]) -> str:
    """{"table": {"key": value}} as TOML text; None values are left out."""
    lines = []
    for name, values in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items() if value is not None]
        lines.append("")
    return "\n".join(lines)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def config_diff(old: Any, new: Any, where: str = "", limit: int = 4) -> list[str]:
    """The settings that differ between two records ({section: {key: value}}, nested), as "section.key: old -> new"
    lines (at most `limit`, then "..."): what an error about a changed config names."""
    out: list[str] = []

    def walk(a: Any, b: Any, at: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k, "(unset)"), b.get(k, "(unset)"), f"{at}.{k}" if at else str(k))
        elif a != b:
            out.append(f"{at or 'value'}: {_short(a)} -> {_short(b)}")

    walk(old, new, where)
    return out[:limit] + (["..."] if len(out) > limit else [])


def _short(v: Any) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) or v != "(unset)" else v
    return text if len(text) <= 60 else text[:57] + "..."
