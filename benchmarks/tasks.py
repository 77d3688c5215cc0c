"""Labeled classification tasks for benchmarks/quality.py, built from installed sources with a fixed seed.

Each task is a folder with train.csv / validation.csv / test.csv (`text,label`) and corpus.txt (one unlabeled
document per line: every text of the source that is not in validation or test):

    debian      apt-cache dumpavail: a package's long description -> its Section (the most frequent sections,
                "contrib/" / "non-free/" prefixes stripped, identical descriptions kept once, capped per class)
    fortunes    /usr/share/games/fortunes (Debian packages fortunes, fortunes-min): a quotation -> its file
    supersense  the bundled default (pretune/resources/wordnet), as it is

Building is deterministic: the same source and seed give byte-identical files.
"""

from __future__ import annotations

import csv
import io
import random
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pretune import files
from pretune.errors import InputError

REPO = Path(__file__).resolve().parents[1]
WORDNET = REPO / "pretune" / "resources" / "wordnet"
FORTUNES_DIR = Path("/usr/share/games/fortunes")
APT_LISTS = Path("/var/lib/apt/lists")
TASKS = ("supersense", "debian", "fortunes")


@dataclass
class Task:
    name: str
    train: Path
    validation: Path
    test: Path
    corpus: Path
    n_classes: int
    n_train: int


# ---- sources -> (text, label) pairs ---------------------------------------------------------------------------------
def deb822(text: str) -> list[dict[str, str]]:
    """Paragraphs of a Debian control-style file: {field: value}, continuation lines kept after a newline."""
    out = []
    for para in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in para.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if fields:
            out.append(fields)
    return out


def long_description(value: str) -> str:
    """A Description field's continuation lines (the synopsis and " ." paragraph breaks dropped) on one line."""
    return " ".join(" ".join(line for line in value.split("\n")[1:] if line != ".").split())


def debian_examples(dumpavail: str, translations: str = "") -> list[tuple[str, str]]:
    """(long description, section) of every package of `apt-cache dumpavail` output that has both. The long
    description is the package's own Description or, when apt keeps it apart, the Description-en of the
    Translation-en record with the same Description-md5."""
    by_md5 = {p["Description-md5"]: long_description(p.get("Description-en", ""))
              for p in deb822(translations) if "Description-md5" in p}
    out = []
    for p in deb822(dumpavail):
        text = long_description(p.get("Description", "")) or by_md5.get(p.get("Description-md5", ""), "")
        section = p.get("Section", "").split("/")[-1]  # contrib/net -> net
        if section and text:
            out.append((text, section))
    return out


def fortunes_examples(folder: Path) -> list[tuple[str, str]]:
    """(quotation on one line, its file's name) for every quotation (between `%` lines) of each fortune file in
    `folder` (plain files without a suffix: the .dat indexes and .u8 links are skipped)."""
    out = []
    for path in sorted(folder.iterdir()):
        if path.suffix or path.is_symlink() or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for quote in re.split(r"^%\s*$", text, flags=re.MULTILINE):
            quote = " ".join(quote.split())
            if quote:
                out.append((quote, path.name))
    return out


def apt_sources() -> tuple[str, str]:
    """`apt-cache dumpavail` and the Translation-en lists (the long descriptions): `apt-get update` (asking for
    the English translations) first when either is missing."""
    def read() -> tuple[str, str]:
        avail = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True).stdout
        helper = "/usr/lib/apt/apt-helper"  # reads the compressed lists (.lz4, .gz, .xz)
        lists = sorted(APT_LISTS.glob("*_i18n_Translation-en*"))
        trans = "\n\n".join(subprocess.run([helper, "cat-file", str(f)], capture_output=True, text=True).stdout
                             for f in lists)
        return avail, trans

    avail, trans = read()
    if not avail.strip() or not trans.strip():
        subprocess.run(["apt-get", "update", "-o", "Acquire::Languages=en"], capture_output=True, check=False)
        avail, trans = read()
    if not avail.strip():
        raise InputError("apt-cache dumpavail printed nothing (even after apt-get update)", path="apt-cache")
    return avail, trans


# ---- (text, label) pairs -> a task folder ---------------------------------------------------------------------------
def dedupe(examples: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each text once; a text seen with two different labels is dropped (it cannot be learned)."""
    labels: dict[str, set[str]] = {}
    for text, label in examples:
        labels.setdefault(text, set()).add(label)
    return sorted((text, next(iter(ls))) for text, ls in labels.items() if len(ls) == 1)


def split_task(examples: list[tuple[str, str]], out: Path, name: str, seed: int, max_classes: int,
               min_per_class: int, cap_per_class: int, eval_size: int) -> Task:
    """Write a task folder from labeled pairs: keep the `max_classes` most frequent labels that have at least
    `min_per_class` examples, at most `cap_per_class` of each (chosen at random), then a random `eval_size` test
    and validation set each (at most a fifth of the examples each) and the rest for training. corpus.txt holds
    every text (of any label) that is in neither validation nor test."""
    pairs = dedupe(examples)
    counts = Counter(label for _, label in pairs)
    keep = sorted(label for label, n in counts.most_common(max_classes) if n >= min_per_class)
    if len(keep) < 2:
        raise InputError(f"task {name}: {len(keep)} label(s) with at least {min_per_class} examples, expected 2 or "
                         "more", path=out)
    rng = random.Random(seed)
    chosen = []
    for label in keep:
        group = [p for p in pairs if p[1] == label]
        chosen += rng.sample(group, min(cap_per_class, len(group)))
    rng.shuffle(chosen)
    n_eval = min(eval_size, len(chosen) // 5)
    test, validation, train = chosen[:n_eval], chosen[n_eval:2 * n_eval], chosen[2 * n_eval:]
    held_out = {text for text, _ in test + validation}
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("validation", validation), ("test", test)):
        files.write_text(out / f"{split}.csv", _csv(rows))
    files.write_text(out / "corpus.txt", "".join(f"{t}\n" for t, _ in pairs if t not in held_out))
    return task_from_folder(out)


def _csv(rows: list[tuple[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    return buf.getvalue()


def labeled_task(name: str, train: Path, validation: Path, test: Path, corpus: Path) -> Task:
    """A Task of existing files (its class and training counts read from the train file)."""
    with train.open(encoding="utf-8", newline="") as f:
        labels = [row["label"] for row in csv.DictReader(f)]
    return Task(name, train, validation, test, corpus, len(set(labels)), len(labels))


def task_from_folder(folder: Path) -> Task:
    """A task folder as split_task writes it (train/validation/test.csv, corpus.txt), named by the folder."""
    missing = [f for f in ("train.csv", "validation.csv", "test.csv", "corpus.txt") if not (folder / f).is_file()]
    if missing:
        raise InputError(f"not a task folder: no {', '.join(missing)}", path=folder)
    return labeled_task(folder.name, folder / "train.csv", folder / "validation.csv", folder / "test.csv",
                        folder / "corpus.txt")


def resolve_task(name: str, root: Path) -> Task:
    """A --tasks entry: a built-in task name (supersense, debian, fortunes) is always that task, even where the working
    directory holds a folder of the same name (quality.py's own run folders are named so); anything else is a task
    folder. Write ./debian for a folder that is named like a built-in task."""
    return build_task(name, root) if name in TASKS else task_from_folder(Path(name))


def build_task(name: str, root: Path, seed: int = 0) -> Task:
    """The task `name` under root/name (built from its installed source)."""
    if name == "supersense":  # the bundled default, as `pretune run` uses it
        return labeled_task(name, WORDNET / "supersense_train.csv", WORDNET / "supersense_validation.csv",
                            WORDNET / "supersense_test.csv", WORDNET / "corpus.txt.gz")
    if name == "debian":
        return split_task(debian_examples(*apt_sources()), root / name, name, seed, max_classes=10,
                          min_per_class=100, cap_per_class=1000, eval_size=1000)
    if name == "fortunes":
        if not FORTUNES_DIR.is_dir():
            raise InputError("no fortune files: install them with `apt-get install -y fortunes fortunes-min`",
                             path=FORTUNES_DIR)
        return split_task(fortunes_examples(FORTUNES_DIR), root / name, name, seed, max_classes=12,
                          min_per_class=150, cap_per_class=1000, eval_size=500)
    raise InputError(f"unknown task {name!r}, expected one of {', '.join(TASKS)}")
