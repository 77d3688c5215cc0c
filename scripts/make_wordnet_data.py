#!/usr/bin/env python3
"""Build pretune's bundled data (pretune/resources/wordnet/) from the WordNet 3.0 database files.

Stdlib only and deterministic for a given --seed. Usage (from the repository root, after
`apt-get install -y wordnet-base`):

    python scripts/make_wordnet_data.py --wordnet /usr/share/wordnet --out pretune/resources/wordnet

Writes supersense_*.csv (noun gloss -> lexicographer file), pairs_*.csv (related / unrelated noun
glosses), tagging_*.conll and spans_*.jsonl (supersense tags of a synset's own words in its example
sentences), corpus.txt.gz (unlabeled glosses, no validation/test synset in it), LICENSE and README.md.

Leakage control: every synset gets at most one split ("train", "validation", "test") across all tasks,
so a synset seen in a validation/test item of one task never appears in a train item of another task
nor in the corpus.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import random
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

# `man 5 lexnames`: lexicographer file number -> name (the standard 45 entries of WordNet 3.0).
LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
]  # fmt: skip
NOUN_SUPERSENSES = [name for name in LEXNAMES if name.startswith("noun.")]
SPLITS = ("train", "validation", "test")
SIZES = {
    "supersense": {"train": 2000, "validation": 500, "test": 2000},
    "pairs": {"train": 1000, "validation": 300, "test": 500},
    "tagging": {"train": 2000, "validation": 500, "test": 1000},
}
# Held-out splits are filled first so that the rarer candidates go to evaluation sets consistently.
FILL_ORDER = ("test", "validation", "train")
MIN_PER_CLASS = {"train": 5, "validation": 1, "test": 1}
TOKEN_RE = re.compile(r"\w+(?:-\w+)*|'\w*|[^\w\s]")
QUOTED_RE = re.compile(r'"([^"]+)"')


@dataclass
class Synset:
    key: str  # "<pos>:<offset>", unique across the four data files
    pos: str  # n, v, a, s, r
    lexname: str  # e.g. noun.animal
    words: list[str]  # lemmas with underscores replaced by spaces
    hypernyms: list[str]  # keys of `@` targets
    instance_hypernyms: list[str]  # keys of `@i` targets
    gloss: str  # whitespace-normalized text after "|": definition; "example"; ...
    examples: list[str] = field(default_factory=list)


def normalize(text: str) -> str:
    return " ".join(text.split())


def tokenize(text: str) -> list[str]:
    """Words (with inner hyphens) and single punctuation marks; "dog's" -> dog 's."""
    return TOKEN_RE.findall(text)


def parse_data_file(path: Path) -> list[Synset]:
    """Parse one `data.<pos>` file (format of `man 5 wndb`)."""
    synsets = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("  "):  # licence header
                continue
            head, sep, gloss = line.partition(" | ")
            if not sep:
                raise SystemExit(f"{path}:{lineno}: expected a synset line with ' | ' before the gloss")
            fields = head.split()
            offset, lex_num, pos = fields[0], int(fields[1]), fields[2]
            n_words = int(fields[3], 16)
            words = []
            for i in range(n_words):
                word = re.sub(r"\([a-z]+\)$", "", fields[4 + 2 * i])  # adjective markers: (a) (p) (ip)
                words.append(word.replace("_", " "))
            at = 4 + 2 * n_words
            n_ptrs = int(fields[at])
            hypernyms, instance_hypernyms = [], []
            for i in range(n_ptrs):
                symbol, target, target_pos = fields[at + 1 + 4 * i : at + 4 + 4 * i]
                target_key = f"{'a' if target_pos == 's' else target_pos}:{target}"
                if symbol == "@":
                    hypernyms.append(target_key)
                elif symbol == "@i":
                    instance_hypernyms.append(target_key)
            gloss = normalize(gloss)
            key_pos = "a" if pos == "s" else pos
            synsets.append(
                Synset(
                    key=f"{key_pos}:{offset}",
                    pos=pos,
                    lexname=LEXNAMES[lex_num],
                    words=words,
                    hypernyms=hypernyms,
                    instance_hypernyms=instance_hypernyms,
                    gloss=gloss,
                    examples=[normalize(e) for e in QUOTED_RE.findall(gloss)],
                )
            )
    return synsets


def load_wordnet(root: Path) -> list[Synset]:
    synsets = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = root / f"data.{pos}"
        if not path.is_file():
            raise SystemExit(f"{path}: expected the WordNet 3.0 data file (apt-get install -y wordnet-base)")
        synsets.extend(parse_data_file(path))
    return synsets


def load_exceptions(root: Path, pos: str) -> dict[str, set[str]]:
    """`<pos>.exc`: base form -> irregular inflected forms (e.g. run -> ran)."""
    forms: dict[str, set[str]] = defaultdict(set)
    path = root / f"{pos}.exc"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            for base in parts[1:]:
                forms[base.replace("_", " ")].add(parts[0].replace("_", " "))
    return forms


class Assigner:
    """Gives each synset at most one split, shared by all tasks."""

    def __init__(self) -> None:
        self.split_of: dict[str, str] = {}

    def fits(self, keys: list[str], split: str) -> bool:
        return all(self.split_of.get(k, split) == split for k in keys)

    def take(self, keys: list[str], split: str) -> None:
        for k in keys:
            self.split_of[k] = split


# ---------------------------------------------------------------------------------------------------------
# Task 1: supersense classification of noun glosses


def quotas(counts: Counter, total: int, minimum: int) -> dict[str, int]:
    """Proportional allocation of `total` over classes, at least `minimum` each (largest remainder)."""
    n = sum(counts.values())
    labels = sorted(counts)
    exact = {c: total * counts[c] / n for c in labels}
    alloc = {c: max(minimum, int(exact[c])) for c in labels}
    by_remainder = sorted(labels, key=lambda c: (-(exact[c] - int(exact[c])), c))
    i = 0
    while sum(alloc.values()) < total:
        alloc[by_remainder[i % len(labels)]] += 1
        i += 1
    by_size = sorted(labels, key=lambda c: (-alloc[c], c))
    i = 0
    while sum(alloc.values()) > total:
        c = by_size[i % len(labels)]
        if alloc[c] > minimum:
            alloc[c] -= 1
        i += 1
    return alloc


def build_supersense(nouns: list[Synset], assigner: Assigner, rng: random.Random) -> dict[str, list[Synset]]:
    by_class: dict[str, list[Synset]] = defaultdict(list)
    for s in nouns:
        by_class[s.lexname].append(s)
    for pool in by_class.values():
        rng.shuffle(pool)
    counts = Counter({c: len(v) for c, v in by_class.items()})
    out: dict[str, list[Synset]] = {}
    for split in FILL_ORDER:
        alloc = quotas(counts, SIZES["supersense"][split], MIN_PER_CLASS[split])
        chosen = []
        for label in sorted(alloc):
            pool = by_class[label]
            taken = [s for s in pool if s.key not in assigner.split_of][: alloc[label]]
            if len(taken) < alloc[label]:
                raise SystemExit(f"supersense: only {len(taken)} synsets left for {label} in {split}")
            for s in taken:
                assigner.take([s.key], split)
            chosen.extend(taken)
        rng.shuffle(chosen)
        out[split] = chosen
    return out


# ---------------------------------------------------------------------------------------------------------
# Task 4/5: supersense tagging of a synset's own words in its example sentences


def inflections(word: str, pos: str, exceptions: dict[str, set[str]]) -> set[str]:
    """The word plus simple regular inflections and WordNet's irregular forms."""
    w = word.lower()
    forms = {w} | {f.lower() for f in exceptions.get(w, ())}
    consonant_y = len(w) > 1 and w.endswith("y") and w[-2] not in "aeiou"
    if pos == "n":
        forms |= {w + "s", w + "es"}
        if consonant_y:
            forms.add(w[:-1] + "ies")
    else:
        forms |= {w + "s", w + "es", w + "ed", w + "ing"}
        if w.endswith("e"):
            forms |= {w + "d", w[:-1] + "ing"}
        if consonant_y:
            forms |= {w[:-1] + "ies", w[:-1] + "ied"}
        if len(w) >= 3 and w[-1] not in "aeiouwxy" and w[-2] in "aeiou" and w[-3] not in "aeiou":
            forms |= {w + w[-1] + "ed", w + w[-1] + "ing"}
    return forms


def lemma_variants(lemma: str, pos: str, exceptions: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Token sequences that count as an occurrence of `lemma`: inflect the head (noun: last, verb: first)."""
    tokens = [t.lower() for t in tokenize(lemma)]
    if not tokens:
        return set()
    variants = {tuple(tokens)}
    whole = lemma.lower()
    if " " not in whole:
        return {(f,) for f in inflections(whole, pos, exceptions)}
    head = len(tokens) - 1 if pos == "n" else 0
    for form in inflections(tokens[head], pos, exceptions):
        variants.add(tuple(tokens[:head] + [form] + tokens[head + 1 :]))
    for form in exceptions.get(whole, ()):  # multiword irregulars (e.g. "took off")
        variants.add(tuple(t.lower() for t in tokenize(form)))
    return variants


def find_spans(tokens: list[str], variants: set[tuple[str, ...]]) -> list[tuple[int, int]]:
    """All (start, end) matches, end exclusive; crossing matches dropped, nested ones kept."""
    lower = [t.lower() for t in tokens]
    found = set()
    for v in variants:
        n = len(v)
        for i in range(len(lower) - n + 1):
            if tuple(lower[i : i + n]) == v:
                found.add((i, i + n))
    kept: list[tuple[int, int]] = []
    for a, b in sorted(found, key=lambda s: (-(s[1] - s[0]), s[0])):
        if all(b <= c or d <= a or (c <= a and b <= d) or (a <= c and d <= b) for c, d in kept):
            kept.append((a, b))
    return sorted(kept)


def outermost(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [s for s in spans if not any(o != s and o[0] <= s[0] and s[1] <= o[1] for o in spans)]


def bio_tags(n_tokens: int, spans: list[tuple[int, int]], label: str) -> list[str]:
    tags = ["O"] * n_tokens
    for a, b in outermost(spans):
        tags[a] = f"B-{label}"
        for i in range(a + 1, b):
            tags[i] = f"I-{label}"
    return tags


@dataclass
class TaggedSentence:
    key: str
    text: str  # the example sentence as in the gloss
    tokens: list[str]
    spans: list[tuple[int, int]]
    label: str  # supersense without the noun./verb. prefix


def tagging_candidates(
    synsets: list[Synset], exceptions: dict[str, dict[str, set[str]]]
) -> list[TaggedSentence]:
    example_count = Counter(e.lower() for s in synsets for e in s.examples)
    candidates = []
    for s in synsets:
        if s.pos not in ("n", "v"):
            continue
        variants: set[tuple[str, ...]] = set()
        for word in s.words:
            variants |= lemma_variants(word, s.pos, exceptions[s.pos])
        for example in s.examples:
            if example_count[example.lower()] > 1:  # shared across synsets: ambiguous and leaky
                continue
            tokens = tokenize(example)
            spans = find_spans(tokens, variants)
            if spans:
                candidates.append(TaggedSentence(s.key, example, tokens, spans, s.lexname.split(".", 1)[1]))
    return candidates


def build_tagging(
    candidates: list[TaggedSentence], assigner: Assigner, rng: random.Random
) -> dict[str, list[TaggedSentence]]:
    pool = list(candidates)
    rng.shuffle(pool)
    used: set[int] = set()
    out: dict[str, list[TaggedSentence]] = {}
    for split in FILL_ORDER:
        chosen = []
        for i, sent in enumerate(pool):
            if len(chosen) == SIZES["tagging"][split]:
                break
            if i not in used and assigner.fits([sent.key], split):
                assigner.take([sent.key], split)
                used.add(i)
                chosen.append(sent)
        out[split] = chosen
    # a label that training never sees cannot be learned, and fine-tuning rejects it: keep held-out splits to train's
    train_labels = {t.label for t in out["train"]}
    for split in ("validation", "test"):
        out[split] = [t for t in out[split] if t.label in train_labels]
    return out


# ---------------------------------------------------------------------------------------------------------
# Task 3: related / unrelated noun gloss pairs


def build_pairs(
    nouns: list[Synset], assigner: Assigner, rng: random.Random
) -> dict[str, list[tuple[Synset, Synset, str]]]:
    by_key = {s.key: s for s in nouns}
    parents = {s.key: [h for h in s.hypernyms if h in by_key] for s in nouns}
    all_parents = {s.key: set(s.hypernyms) | set(s.instance_hypernyms) for s in nouns}
    children: dict[str, list[str]] = defaultdict(list)
    for k, ps in parents.items():
        for p in ps:
            children[p].append(k)
    edges = sorted((c, p) for c, ps in parents.items() for p in ps)
    with_parent = sorted(k for k, ps in parents.items() if ps)
    keys = sorted(by_key)
    by_lexname: dict[str, list[str]] = defaultdict(list)
    for s in nouns:
        by_lexname[s.lexname].append(s.key)

    def related(a: str, b: str) -> bool:
        return a in all_parents[b] or b in all_parents[a] or bool(all_parents[a] & all_parents[b])

    def sample_related() -> tuple[str, str] | None:
        if rng.random() < 0.5:  # hypernym / hyponym
            return rng.choice(edges)
        child = rng.choice(with_parent)
        siblings = children[rng.choice(parents[child])]
        sibling = rng.choice(siblings)
        return (child, sibling) if sibling != child else None

    def sample_unrelated() -> tuple[str, str] | None:
        a = rng.choice(keys)
        # half from the same lexicographer file, so that topic alone does not give the label away
        b = rng.choice(by_lexname[by_key[a].lexname]) if rng.random() < 0.5 else rng.choice(keys)
        return None if a == b or related(a, b) else (a, b)

    seen: set[frozenset[str]] = set()
    out: dict[str, list[tuple[Synset, Synset, str]]] = {}
    for split in FILL_ORDER:
        n = SIZES["pairs"][split]
        chosen = []
        for label, sampler in (("related", sample_related), ("unrelated", sample_unrelated)):
            got, tries = 0, 0
            while got < n // 2:
                tries += 1
                if tries > 1_000_000:
                    raise SystemExit(f"pairs: could not sample enough {label} pairs for {split}")
                pair = sampler()
                if pair is None or frozenset(pair) in seen or not assigner.fits(list(pair), split):
                    continue
                seen.add(frozenset(pair))
                assigner.take(list(pair), split)
                a, b = pair if rng.random() < 0.5 else pair[::-1]
                chosen.append((by_key[a], by_key[b], label))
                got += 1
        rng.shuffle(chosen)
        out[split] = chosen
    return out


# ---------------------------------------------------------------------------------------------------------
# Task 2: the unlabeled corpus


def build_corpus(
    synsets: list[Synset],
    assigner: Assigner,
    heldout_sentences: set[str],
    target_bytes: int,
    rng: random.Random,
) -> list[str]:
    heldout_keys = {k for k, split in assigner.split_of.items() if split != "train"}
    heldout_glosses = {s.gloss for s in synsets if s.key in heldout_keys}
    lines = []
    for s in synsets:
        if s.key in heldout_keys or s.gloss in heldout_glosses:
            continue
        if any(e.lower() in heldout_sentences for e in s.examples):
            continue
        lines.append(s.gloss)
    lines = sorted(set(lines))
    rng.shuffle(lines)
    out, size = [], 0
    for line in lines:
        if size >= target_bytes:
            break
        out.append(line)
        size += len(line.encode("utf-8")) + 1
    return out


# ---------------------------------------------------------------------------------------------------------
# Writing


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_tagging(out: Path, split: str, sentences: list[TaggedSentence]) -> None:
    with open(out / f"tagging_{split}.conll", "w", encoding="utf-8") as f:
        for sent in sentences:
            for token, tag in zip(
                sent.tokens, bio_tags(len(sent.tokens), sent.spans, sent.label), strict=True
            ):
                f.write(f"{token} {tag}\n")
            f.write("\n")
    with open(out / f"spans_{split}.jsonl", "w", encoding="utf-8") as f:
        for sent in sentences:
            spans = [{"start": a, "end": b, "label": sent.label} for a, b in sent.spans]
            f.write(json.dumps({"tokens": sent.tokens, "spans": spans}, ensure_ascii=False) + "\n")


def write_corpus(path: Path, lines: list[str]) -> None:
    data = ("\n".join(lines) + "\n").encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)  # mtime=0 and no file name: identical bytes on every run
    path.write_bytes(buf.getvalue())


def licence_text(copyright_path: Path) -> str:
    """The `License: WordNet3.0` paragraph of the Debian copyright file, un-indented."""
    if not copyright_path.is_file():
        raise SystemExit(f"{copyright_path}: expected the wordnet-base copyright file")
    lines = copyright_path.read_text(encoding="utf-8").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("License: WordNet"))
    except StopIteration:
        raise SystemExit(f"{copyright_path}: expected a 'License: WordNet3.0' paragraph") from None
    body = []
    for line in lines[start + 1 :]:
        if not line.startswith(" "):
            break
        body.append("" if line.strip() == "." else line[1:])
    return "WordNet Release 3.0\n\n" + "\n".join(body).strip() + "\n"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_readme(path: Path, stats: dict, seed: int, corpus_bytes: int) -> None:
    ss, pairs, tags = stats["supersense"], stats["pairs"], stats["tagging"]
    file_rows = [[f"supersense_{s}.csv", sum(ss[s].values()), "rows"] for s in SPLITS]
    file_rows += [[f"pairs_{s}.csv", sum(pairs[s].values()), "rows"] for s in SPLITS]
    file_rows += [
        [f"tagging_{s}.conll / spans_{s}.jsonl", stats["sentences"][s], "sentences"] for s in SPLITS
    ]
    file_rows += [
        ["corpus.txt.gz", stats["corpus_lines"], f"lines ({stats['corpus_bytes']:,} bytes uncompressed)"]
    ]
    ss_rows = [[label] + [ss[s][label] for s in SPLITS] for label in NOUN_SUPERSENSES]
    pair_rows = [[label] + [pairs[s][label] for s in SPLITS] for label in ("related", "unrelated")]
    tag_labels = sorted(set().union(*(tags[s] for s in SPLITS)))
    tag_rows = [[label] + [tags[s][label] for s in SPLITS] for label in tag_labels]
    command = (
        "python scripts/make_wordnet_data.py --wordnet /usr/share/wordnet --out pretune/resources/wordnet"
        + (f" --seed {seed}" if seed != 0 else "")
        + (f" --corpus-bytes {corpus_bytes}" if corpus_bytes != 5_500_000 else "")
    )
    text = f"""# Bundled data: WordNet 3.0

Small real datasets derived from **WordNet 3.0** (Princeton University), the database files
`data.noun`, `data.verb`, `data.adj`, `data.adv` of the Debian package `wordnet-base` (1:3.0).
Licence: the WordNet 3.0 licence, reproduced in [LICENSE](LICENSE) (use, copy, modify and distribute
with the copyright notice). The labels are WordNet's own annotations made by its lexicographers.

Regenerate (deterministic; needs `apt-get install -y wordnet-base`, stdlib only):

```
{command}
```

A "gloss" below is a synset's text after `|` in the data file, whitespace-normalized: its definition,
then its example sentences in double quotes, e.g.
`a member of the genus Canis ...; "the dog barked all night"`.

## No leakage between splits

Every synset is given at most one split (train / validation / test) across *all* tasks: a synset used in a
validation or test item of any task appears in no train item of any task and not in the corpus. The
corpus also leaves out any gloss identical to a held-out gloss and any gloss containing a held-out tagging
sentence. Supersense and pair items use only synsets whose gloss text is unique in WordNet; tagging uses
only example sentences that occur in exactly one synset.

## Files

{table(["file", "count", "unit"], file_rows)}

- `supersense_{{train,validation,test}}.csv` (`text,label`): a noun synset's gloss -> its lexicographer file,
  one of the 26 noun supersenses (`noun.animal`, ...). Sampled at random, stratified: each class gets its
  natural share of each split (largest remainder), but at least 5 in train and 1 in validation and test.
  Few labels on purpose: this is the main labeled task.
- `pairs_{{train,validation,test}}.csv` (`text_a,text_b,label`): two noun glosses. `related` when one
  synset is a direct hypernym (`@` pointer) of the other (half of the related pairs) or both share a direct
  hypernym (siblings, the other half); `unrelated` for a random pair with no hypernym (`@` or `@i`) link
  and no shared hypernym, half of them drawn from the same lexicographer file so that topic alone does not
  decide. Balanced 50/50, order within a pair random.
- `tagging_{{train,validation,test}}.conll` (`token tag` per line, blank line between sentences): the
  example sentences of noun and verb synsets that contain one of the synset's own words (lemma,
  underscores -> spaces, case-insensitive, whole tokens; regular inflections of the head word, +s/+es/+ies
  for nouns, +s/+es/+ed/+d/+ing/doubled consonant for verbs, plus WordNet's irregular forms from
  `noun.exc` / `verb.exc`). Tokens: regex `{TOKEN_RE.pattern}` (words with inner hyphens, `'s`-style
  clitics, single punctuation marks). The occurrence is tagged `B-<supersense>`/`I-<supersense>`
  (supersense without `noun.`/`verb.`, so `noun.body` and `verb.body` are both `body`), all else `O`.
  Only the synset's own words are tagged: other nouns and verbs in the sentence are `O`.
- `spans_{{train,validation,test}}.jsonl`: the same sentences, in the same order, as
  `{{"tokens": [...], "spans": [{{"start": i, "end": j, "label": "animal"}}]}}` (end exclusive). Nested
  occurrences of several of the synset's words are all kept here; the CoNLL file tags the outermost ones.
- `corpus.txt.gz`: unlabeled text, one gloss per line, glosses of synsets of all parts of speech minus
  the held-out ones, shuffled, cut at about {corpus_bytes / 1e6:.1f} MB uncompressed.

## Labels

Supersense classification (rows per label):

{table(["label", *SPLITS], ss_rows)}

Pairs:

{table(["label", *SPLITS], pair_rows)}

Tagging (spans per label; a span is one occurrence, nested ones counted):

{table(["label", *SPLITS], tag_rows)}
"""
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--wordnet", type=Path, default=Path("/usr/share/wordnet"), help="dir with data.noun etc."
    )
    parser.add_argument("--out", type=Path, default=Path("pretune/resources/wordnet"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus-bytes", type=int, default=5_500_000, help="target uncompressed corpus size")
    parser.add_argument(
        "--copyright", type=Path, default=Path("/usr/share/doc/wordnet-base/copyright"), help="licence source"
    )
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    synsets = load_wordnet(args.wordnet)
    exceptions = {"n": load_exceptions(args.wordnet, "noun"), "v": load_exceptions(args.wordnet, "verb")}
    gloss_count = Counter(s.gloss for s in synsets)
    unique_nouns = [s for s in synsets if s.pos == "n" and gloss_count[s.gloss] == 1]

    assigner = Assigner()
    supersense = build_supersense(unique_nouns, assigner, rng)
    tagging = build_tagging(tagging_candidates(synsets, exceptions), assigner, rng)
    pairs = build_pairs(unique_nouns, assigner, rng)
    heldout_sentences = {t.text.lower() for split in ("validation", "test") for t in tagging[split]}
    corpus = build_corpus(synsets, assigner, heldout_sentences, args.corpus_bytes, rng)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        write_csv(
            out / f"supersense_{split}.csv",
            ["text", "label"],
            [[s.gloss, s.lexname] for s in supersense[split]],
        )
        write_csv(
            out / f"pairs_{split}.csv",
            ["text_a", "text_b", "label"],
            [[a.gloss, b.gloss, y] for a, b, y in pairs[split]],
        )
        write_tagging(out, split, tagging[split])
    write_corpus(out / "corpus.txt.gz", corpus)
    (out / "LICENSE").write_text(licence_text(args.copyright), encoding="utf-8")

    stats = {
        "supersense": {s: Counter(x.lexname for x in supersense[s]) for s in SPLITS},
        "pairs": {s: Counter(y for _, _, y in pairs[s]) for s in SPLITS},
        "tagging": {s: Counter(t.label for t in tagging[s] for _ in t.spans) for s in SPLITS},
        "sentences": {s: len(tagging[s]) for s in SPLITS},
        "corpus_lines": len(corpus),
        "corpus_bytes": sum(len(line.encode("utf-8")) + 1 for line in corpus),
    }
    write_readme(out / "README.md", stats, args.seed, args.corpus_bytes)

    print(f"parsed {len(synsets)} synsets ({len(unique_nouns)} nouns with a unique gloss)")
    for split in SPLITS:
        print(
            f"{split:>10}: supersense {len(supersense[split])} ({len(stats['supersense'][split])} classes), "
            f"pairs {len(pairs[split])} {dict(stats['pairs'][split])}, "
            f"tagging {len(tagging[split])} sentences / {sum(stats['tagging'][split].values())} spans "
            f"({len(stats['tagging'][split])} labels)"
        )
    held = sum(1 for v in assigner.split_of.values() if v != "train")
    print(
        f"corpus: {stats['corpus_lines']} lines, {stats['corpus_bytes']:,} bytes "
        f"({held} held-out synsets excluded)"
    )
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"wrote {out} ({total:,} bytes on disk)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
