"""Methods x label counts: which alternative wins at each number of labels, and by how much.

A table is a plain dict {method: {label count: report}}, where a report is any dict of test scores (the evaluator's
report, or a result dict's "report"). Pure functions, so the HTML report, the run summary and the terminal can all
use them.
"""

from __future__ import annotations

from collections.abc import Iterable

Table = dict[str, dict[int, dict]]


def table_from_results(results: Iterable[dict]) -> Table:
    """{method: {n_labels: report}} from result dicts that carry "method", "n_labels" and "report"."""
    table: Table = {}
    for r in results:
        table.setdefault(r["method"], {})[int(r["n_labels"])] = r["report"]
    return table


def table_from_summary(comparison: dict) -> Table:
    """summary.json's "comparison" table ({method: {"200": score}}) back as a Table."""
    metric = comparison["metric"]
    return {m: {int(n): {metric: v} for n, v in row.items()} for m, row in comparison["table"].items()}


def label_counts(table: Table) -> list[int]:
    """Every label count any method was run with, ascending."""
    return sorted({n for row in table.values() for n in row})


def ranked(table: Table, metric: str, n: int, digits: int = 3) -> list[tuple[str, float]]:
    """(method, score) of every method run with `n` labels, best first; equal scores (at `digits`) keep the
    table's method order."""
    cells = [(m, float(row[n][metric])) for m, row in table.items() if n in row]
    return sorted(cells, key=lambda c: -round(c[1], digits))


def best_per_column(table: Table, metric: str, digits: int = 3) -> dict[int, list[str]]:
    """{n_labels: the method(s) with the best score}; several when they tie at `digits` decimals."""
    best = {}
    for n in label_counts(table):
        cells = ranked(table, metric, n, digits)
        best[n] = [m for m, s in cells if round(s, digits) == round(cells[0][1], digits)]
    return best


def format_table(table: Table, metric: str, digits: int = 3) -> str:
    """A fixed-width text table: one row per method, one column per label count, the best of a column starred."""
    counts = label_counts(table)
    best = best_per_column(table, metric, digits)
    width = max([len(m) for m in table] + [len(metric)])
    cell = max(digits + 4, *(len(f"{n:,}") for n in counts)) if counts else digits + 4
    lines = [(f"{metric:<{width}} " + " ".join(f"{n:>{cell},} " for n in counts)).rstrip()]
    for method, row in table.items():
        cells = []
        for n in counts:
            text = f"{row[n][metric]:.{digits}f}" + ("*" if method in best[n] else " ") if n in row else "-"
            cells.append(f"{text:>{cell + 1}}")
        lines.append(f"{method:<{width}} " + " ".join(cells))
    return "\n".join(lines)


def _clause(table: Table, metric: str, n: int, digits: int) -> str:
    cells = ranked(table, metric, n, digits)
    best = best_per_column(table, metric, digits)[n]
    top = f"{cells[0][1]:.{digits}f}"
    what = "label" if n == 1 else "labels"
    if len(cells) == 1:
        return f"with {n:,} {what} {cells[0][0]} is the only method ({top})"
    if len(best) > 1:
        names = ", ".join(best[:-1]) + f" and {best[-1]}"
        rest = cells[len(best)] if len(cells) > len(best) else None
        behind = f", +{cells[0][1] - rest[1]:.{digits}f} over {rest[0]}" if rest else ""
        return f"with {n:,} {what} {names} tie ({top}{behind})"
    runner_up, score = cells[1]
    return f"with {n:,} {what} {cells[0][0]} is best ({top}, +{cells[0][1] - score:.{digits}f} over {runner_up})"


def winner_sentence(table: Table, metric: str, digits: int = 3) -> str:
    """One plain sentence naming the best method at each label count and its margin over the runner-up, e.g.
    "With 200 labels TF-IDF + LR is best (0.397, +0.068 over pretune pretrained); with 2,000 labels ..."."""
    clauses = [_clause(table, metric, n, digits) for n in label_counts(table)]
    if not clauses:
        return "No results to compare."
    sentence = "; ".join(clauses)
    return f"{sentence[0].upper()}{sentence[1:]}."
