"""The HTML report and the terminal summary (pretune/report.py), on small made-up run data."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pytest

from pretune.evaluate.metrics import classification_report, entity_report, headline_metrics
from pretune.evaluate.plots import short_labels
from pretune.evaluate.report import ReportData, format_summary, gains, render_report, write_report

LABELS = ["noun.animal", "noun.artifact", "noun.person", "noun.plant"]
SECTIONS = ("results", "data", "pretraining", "finetuning", "label-efficiency", "errors", "examples", "config")


def _log(steps: int, start: float, metric: str) -> list[dict]:
    recs = []
    for s in range(10, steps + 1, 10):
        recs.append({"step": s, "split": "train", "loss": start / (1 + s / 50)})
        if s % 30 == 0:
            recs.append({"step": s, "split": "validation", metric: 1 - 1 / (1 + s / 40), "loss": 1.0})
    return recs


def _classification(accuracy: float, n: int = 200, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(LABELS), n)
    wrong = rng.random(n) > accuracy
    pred = np.where(wrong, (y + 1) % len(LABELS), y)
    return classification_report(y.tolist(), pred.tolist(), LABELS)


def _summary(reports: dict[str, dict], sweep: bool = True) -> dict:
    models = {m: {"test": headline_metrics(r), "n_train": 2000, "steps": 500, "best": 0.5} for m, r in reports.items()}
    points = []
    if sweep:
        for f, n, a, b in ((0.01, 20, 0.2, 0.1), (0.1, 200, 0.45, 0.25), (1.0, 2000, 0.7, 0.4)):
            points.append({"fraction": f, "n_train": n, "pretrained": {"accuracy": a}, "baseline": {"accuracy": b}})
    return {
        "task": "classify", "metric": "accuracy", "test_size": 200, "models": models, "gain": gains(reports),
        "sweep": points, "sweep_metric": "accuracy", "wall_seconds": 12.5, "created": "now",
        "corpus": {"files": ["corpus.txt.gz"], "tokenizer": "wordpiece", "vocab_size": 8000,
                   "splits": {"train": {"documents": 100, "tokens": 2000, "tokens_per_document": 20.0}}},
        "labels": {"counts": {"train": {"noun.animal": 3, "noun.person": 5}, "test": {"noun.animal": 1}},
                   "unit": "examples", "note": "train: 8 examples"},
        "stages": {"tokenizer": {"skipped": True, "seconds": 1.0}, "pretrain": {"skipped": False, "seconds": 9.0}},
    }


def _data(sweep: bool = True, examples: list | None = None) -> ReportData:
    reports = {"pretrained": _classification(0.8, seed=1), "baseline": _classification(0.5, seed=2)}
    return ReportData(
        title="pretune test <report>",
        summary=_summary(reports, sweep),
        config_text='[run]\nout = "x"\n',
        pretrain_log=[{"step": s, "split": "train", "loss": 9 - s / 100} for s in range(10, 310, 10)]
        + [{"step": s, "split": "validation", "mlm_loss": 8 - s / 100, "mlm_accuracy": s / 1000}
           for s in (100, 200, 300)],
        finetune_logs={"pretrained": _log(120, 3.0, "accuracy"), "baseline": _log(120, 3.3, "accuracy")},
        test_reports=reports,
        examples=examples if examples is not None else [
            {"text": "a <b>bold</b> dog & co", "gold": "animal", "predictions": {"pretrained": "animal",
                                                                               "baseline": "plant"}, "html": None},
        ],
    )


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_headline_and_gains():
    a, b = _classification(0.9, seed=3), _classification(0.4, seed=4)
    h = headline_metrics(a)
    assert list(h) == ["accuracy", "macro_f1", "micro_f1"]
    assert h["accuracy"] == pytest.approx(a["accuracy"])
    g = gains({"pretrained": a, "baseline": b})
    assert g["accuracy"] == pytest.approx(a["accuracy"] - b["accuracy"])
    assert g["accuracy"] > 0.3
    assert gains({"pretrained": a}) == {}
    ent = entity_report([["B-X", "I-X", "O"]], [["B-X", "I-X", "O"]])
    assert list(headline_metrics(ent)) == ["f1", "precision", "recall"]


def test_short_labels():
    assert short_labels(["noun.act", "noun.animal"]) == ["act", "animal"]
    assert short_labels(["noun.act", "verb.body"]) == ["noun.act", "verb.body"]
    assert short_labels(["related", "unrelated"]) == ["related", "unrelated"]


def test_format_summary_side_by_side_with_gain():
    data = _data()
    text = format_summary(data.summary)
    acc_line = next(line for line in text.splitlines() if line.startswith("accuracy"))
    a = data.summary["models"]["pretrained"]["test"]["accuracy"]
    b = data.summary["models"]["baseline"]["test"]["accuracy"]
    assert f"{a:.4f}" in acc_line and f"{b:.4f}" in acc_line and f"{a - b:+.4f}" in acc_line
    assert "pretrained" in text.splitlines()[1] and "gain" in text.splitlines()[1]
    assert "sweep 1%" in text and "sweep 100%" in text
    assert format_summary({"models": {}}) == "no models were evaluated"


def test_report_has_every_section_and_valid_images(tmp_path):
    from PIL import Image

    path = write_report(tmp_path, _data())
    html = path.read_text(encoding="utf-8")
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in html, sid
    images = _images(html)
    assert len(images) == 4  # pretraining, fine-tuning, label efficiency, confusion matrices
    for png in images:
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            assert im.width > 300 and im.height > 200
            # a real plot, not a blank canvas: many distinct colours
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 20
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html  # self-contained
    # user text is escaped, the gain is shown with its sign
    assert "a &lt;b&gt;bold&lt;/b&gt; dog &amp; co" in html and "<b>bold</b>" not in html
    assert "pretune test &lt;report&gt;" in html
    gain = _data().summary["gain"]["accuracy"]
    assert f"{gain:+.4f}" in html
    assert not list(tmp_path.glob(".*tmp"))


def test_report_without_sweep_or_pretraining_and_token_task():
    data = _data(sweep=False)
    data.pretrain_log = []
    tag_reports = {m: entity_report([["B-X", "O", "B-Y"]], [p]) for m, p in
                   (("pretrained", ["B-X", "O", "B-Y"]), ("baseline", ["B-X", "O", "O"]))}
    data.test_reports = tag_reports
    data.summary["models"] = {m: {"test": headline_metrics(r)} for m, r in tag_reports.items()}
    html = render_report(data)
    assert 'id="label-efficiency"' not in html
    assert "No pretraining in this run" in html
    assert "Per entity type" in html
    rows = re.findall(r"<tr><td class=\"l\">(X|Y)</td>(.*?)</tr>", html)
    assert [r[0] for r in rows] == ["X", "Y"]
    assert "+1.0000" in rows[1][1]  # Y: found by the pretrained model only
    assert len(_images(html)) == 1  # fine-tuning curves only


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


CHECK_SCRIPT = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images];
  document.body.dataset.images = imgs.map(i => (i.complete ? i.naturalWidth : -1)).join(",");
});</script></body>"""


def load_in_chromium(html_path, tmp_path) -> list[int]:
    """Open a copy of the report with a check script in headless Chromium; the naturalWidth of every image."""
    browser = _chromium()
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text(encoding="utf-8").replace("</body>", CHECK_SCRIPT), encoding="utf-8")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'<body[^>]*data-images="([-0-9,]*)"', dom)
    assert m, f"the check script did not run; DOM starts with {dom[:300]!r}"
    return [int(x) for x in m.group(1).split(",") if x]


@pytest.mark.skipif(_chromium() is None, reason="no headless browser: install Debian's `chromium` package "
                    "(apt-get install -y chromium) to check that the report renders")
def test_report_renders_in_chromium(tmp_path):
    path = write_report(tmp_path / "r", _data())
    widths = load_in_chromium(path, tmp_path)
    assert len(widths) == 4
    assert all(w > 300 for w in widths), widths


def test_format_summary_names_the_kept_self_training_round_and_the_search():
    summary = _data().summary
    assert "self-training" not in format_summary(summary) and "search" not in format_summary(summary)
    rounds = [{"round": 0, "validation": 0.50, "kept": True}, {"round": 1, "validation": 0.55, "kept": True},
              {"round": 2, "validation": 0.54, "kept": False}]
    summary = {**summary, "self_training": {"metric": "accuracy", "rounds": rounds},
               "tune": {"trials": 8, "best": {"number": 3, "value": 0.6}}}
    text = format_summary(summary)
    assert "self-training round 1 (of rounds 0-2" in text and "2: 0.5400" in text
    assert "8-trial search (trial 3)" in text
