"""The report's plots: matplotlib figures, each returned as an <img> holding a base64 PNG (None when there is
nothing to draw). matplotlib is imported when the first figure is drawn: it is slow to import and only the report
needs it."""

from __future__ import annotations

import base64
import io
import math

MODELS = ("pretrained", "baseline")  # display order; the gain is pretrained - baseline
COLORS = {"pretrained": "#1f77b4", "baseline": "#d62728"}


def percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def short_labels(labels: list[str]) -> list[str]:
    """Drop a dotted prefix that every label shares: ['noun.act', 'noun.animal'] -> ['act', 'animal']."""
    prefixes = {x.split(".", 1)[0] for x in labels if "." in x}
    if len(prefixes) == 1 and all("." in x and not x.endswith(".") for x in labels):
        return [x.split(".", 1)[1] for x in labels]
    return list(labels)



def _figure(ncols: int = 1, width: float = 5.2, height: float = 3.4):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def _png(fig) -> str:
    """An <img> holding the figure as a base64 PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _series(records: list[dict], split: str, key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if r.get("split") == split and isinstance(r.get(key), (int, float))
           and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _validation_keys(records: list[dict]) -> list[str]:
    keys: list[str] = []
    for r in records:
        if r.get("split") == "validation":
            keys += [k for k, v in r.items() if k not in ("step", "split") and isinstance(v, (int, float))
                     and k not in keys]
    return keys


def pretraining_plot(records: list[dict]) -> str | None:
    """Train and validation loss (left), validation accuracy of the objective (right)."""
    steps, loss = _series(records, "train", "loss")
    if not steps:
        return None
    val_keys = _validation_keys(records)
    loss_keys = [k for k in val_keys if k.endswith("_loss")]
    acc_keys = [k for k in val_keys if k.endswith("_accuracy")]
    fig, axes = _figure(2 if acc_keys else 1)
    ax = axes[0]
    ax.plot(steps, loss, label="train loss", color="#7f7f7f", lw=1.2)
    for k in loss_keys:
        ax.plot(*_series(records, "validation", k), "o-", ms=3, label=f"validation {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.set_title("pretraining loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if acc_keys:
        ax = axes[1]
        for k in acc_keys:
            ax.plot(*_series(records, "validation", k), "o-", ms=3, label=k)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        ax.set_title("validation: masked-token accuracy" if "mlm_accuracy" in acc_keys else "validation accuracy")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _png(fig)


def finetuning_plot(logs: dict[str, list[dict]], metric: str) -> str | None:
    """Training loss (left) and the validation metric (right) of the pretrained model and the baseline."""
    names = [m for m in MODELS if logs.get(m)] + [m for m in logs if m not in MODELS and logs[m]]
    if not names:
        return None
    fig, (left, right) = _figure(2)
    for name in names:
        color = COLORS.get(name)
        steps, loss = _series(logs[name], "train", "loss")
        left.plot(steps, loss, "o-" if len(steps) < 15 else "-", ms=3, label=name, color=color, lw=1.2)
        right.plot(*_series(logs[name], "validation", metric), "o-", ms=3, label=name, color=color)
    left.set_title("fine-tuning: training loss")
    left.set_ylabel("loss")
    right.set_title(f"fine-tuning: validation {metric}")
    right.set_ylabel(metric)
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def tuning_plot(search: dict) -> str | None:
    """Each trial's validation value (pruned trials at their last evaluation, marked x) and the best so far."""
    def finite(v) -> bool:
        return isinstance(v, (int, float)) and math.isfinite(v)

    trials = search.get("trials", [])
    done = [(t["number"], t["value"]) for t in trials if t["state"] == "complete" and finite(t["value"])]
    pruned = [(t["number"], t["evaluations"][-1]) for t in trials
              if t["state"] == "pruned" and t["evaluations"] and finite(t["evaluations"][-1])]
    if not done and not pruned:
        return None
    greater = search.get("direction") != "minimize"
    fig, (ax,) = _figure(1, width=6.0, height=3.6)
    if done:
        ax.plot([n for n, _ in done], [v for _, v in done], "o", color=COLORS["pretrained"], label="complete")
        best, xs, ys = None, [], []
        for n, v in done:
            best = v if best is None or (v > best if greater else v < best) else best
            xs.append(n)
            ys.append(best)
        last = max(t["number"] for t in trials)
        if last > xs[-1]:  # the line runs on to the last trial
            xs.append(last)
            ys.append(best)
        ax.step(xs, ys, where="post", color=COLORS["pretrained"], alpha=0.5, label="best so far")
    if pruned:
        ax.plot([n for n, _ in pruned], [v for _, v in pruned], "x", color="#7f7f7f", ms=7,
                label="pruned (at its last evaluation)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {search.get('metric', '')}")
    ax.set_title("hyperparameter search")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def sweep_plot(points: list[dict], metric: str) -> str | None:
    """Test metric against the number of labels used (log scale), one line per model."""
    if not points:
        return None
    fig, (ax,) = _figure(1, width=6.0, height=3.8)
    for name in MODELS:
        pts = sorted((p["n_train"], p[name][metric]) for p in points if metric in p.get(name, {}))
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", label=name, color=COLORS[name])
    ticks = sorted({p["n_train"]: p["fraction"] for p in points if p.get("n_train")}.items())
    return _label_axis(fig, ax, {n: f"{n:,}\n({percent(f)})" for n, f in ticks}, metric, "label efficiency")


def _label_axis(fig, ax, ticks: dict[int, str], metric: str, title: str) -> str:
    """Finish a label-efficiency plot: log-scale label counts with these tick texts; returns the PNG."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    ax.set_xticks(list(ticks), list(ticks.values()), fontsize=8)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("labeled training examples (log scale)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def comparison_plot(table: dict[str, dict[int, dict]], metric: str) -> str | None:
    """Test metric against the number of labels (log scale), one line per method of a comparison table."""
    if not table:
        return None
    fig, (ax,) = _figure(1, width=6.5, height=4.0)
    for method, row in table.items():
        pts = sorted((n, r[metric]) for n, r in row.items())
        ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", label=method)
    counts = sorted({n for row in table.values() for n in row})
    return _label_axis(fig, ax, {n: f"{n:,}" for n in counts}, metric, "label efficiency of every method")


def confusion_plot(reports: dict[str, dict]) -> str | None:
    """Row-normalised confusion matrices (true label per row), one panel per model."""
    names = [m for m in MODELS if "confusion" in reports.get(m, {})]
    if not names:
        return None
    import numpy as np

    labels = reports[names[0]]["labels"]
    k = len(labels)
    side = min(9.0, max(3.6, 0.28 * k + 2.0))
    fig, axes = _figure(len(names), width=side + 0.6, height=side)
    short = short_labels(labels)
    for ax, name in zip(axes, names, strict=True):
        m = np.asarray(reports[name]["confusion"], dtype=float)  # [K_true, K_pred]
        rows = m.sum(axis=1, keepdims=True)
        norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(k), short, rotation=90, fontsize=7 if k > 12 else 9)
        ax.set_yticks(range(k), short, fontsize=7 if k > 12 else 9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name} (accuracy {reports[name].get('accuracy', 0):.3f})")
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    if m[i, j]:
                        ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8,
                                color="white" if norm[i, j] > 0.5 else "black")
    return _png(fig)

