"""report.html: self-contained (valid HTML, only embedded images), the sections a user looks for."""
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import make_images, split_rows

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Checker(HTMLParser):
    """Well-formedness (every element closed, in order) and every reference it makes."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.imgs, self.refs, self.cards = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        for k in ("src", "href", "action", "data", "poster"):
            if a.get(k):
                self.refs.append(a[k])
        if tag == "div" and "card" in (a.get("class") or "").split():
            self.cards.append({"ok": "ok" in a["class"].split(), "text": ""})
        if tag in ("script", "link", "iframe", "object"):
            self.errors.append(f"<{tag}> in a self-contained report")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self.cards and "div" in self.stack:
            self.cards[-1]["text"] += data


def check_self_contained(html: str) -> Checker:
    assert html.startswith("<!DOCTYPE html>")
    c = Checker()
    c.feed(html)
    c.close()
    assert not c.errors, c.errors[:5]
    assert not c.stack, f"unclosed: {c.stack}"
    assert c.imgs and all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in c.imgs)
    assert all(r.startswith("data:") for r in c.refs), [r[:60] for r in c.refs if not r.startswith("data:")]
    assert not re.search(r"url\(\s*['\"]?https?:", html) and "@import" not in html
    return c


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory, tiny_spec):
    """A fit run whose val split has a relabelled image: the model gets it wrong, confidently."""
    from rehead.fit import fit
    tmp_path = tmp_path_factory.mktemp("fitrun")
    root = make_images(tmp_path / "imgs", n=8)
    rows = split_rows(8, lambda i: "train" if i < 5 else "val")
    rows[-1] = rows[-1].replace(",blue,", ",red,")  # a blue image labelled red, in val
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    run = fit(str(root / "data.csv"), model=tiny_spec, out=tmp_path / "run", strategy="extract", epochs=20, lr=1e-2,
              workers=0, cache_dir=str(tmp_path / "cache"), progress=False, echo=lambda *_: None)
    (run.dir / "lr_find.json").write_text(json.dumps({"lrs": [1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
                                                      "losses": [0.7, 0.69, 0.5, 0.4, 2.0], "suggested": 1e-3}))
    return run


def test_fit_report_is_self_contained_with_curves_confusion_and_gallery(fit_run):
    from rehead.report import write_report
    path = write_report(fit_run.dir, echo=lambda *_: None)
    html = path.read_text()
    c = check_self_contained(html)
    for section in ("Metrics", "Learning curves", "Learning-rate finder", "Confusion matrix",
                    "Validation predictions", "Data", "Configuration"):
        assert f"<h2>{section}</h2>" in html
    for png in ("curves.png", "confusion.png", "lr_find.png"):
        assert (fit_run.dir / png).stat().st_size > 1000
    # Every val sample has a card; the mistakes come first, in red, the most confident first.
    items, labels = fit_run.val_split()
    res = fit_run.evaluate(items, labels)
    assert len(c.cards) == len(items)
    n_wrong = sum(p != t for p, t in zip(res["predictions"], res["targets"]))
    assert n_wrong >= 1
    assert [card["ok"] for card in c.cards] == [False] * n_wrong + [True] * (len(items) - n_wrong)
    probs = [float(re.search(r"pred \S+ ([\d.]+)", card["text"]).group(1)) for card in c.cards]
    assert probs[:n_wrong] == sorted(probs[:n_wrong], reverse=True)
    assert probs[n_wrong:] == sorted(probs[n_wrong:])


def test_report_of_a_probe_run_names_the_best_depth(tmp_path, tiny_spec, image_folder):
    from rehead.experiments.probe import probe
    from rehead.report import write_report
    res = probe(str(image_folder), model=tiny_spec, out=tmp_path / "p", workers=0, progress=False,
                echo=lambda *_: None)
    html = write_report(tmp_path / "p").read_text()
    check_self_contained(html)
    assert f"cut {res['best']['cut']} ({res['best']['stage']})" in html
    # One row per depth, the best one highlighted.
    rows = re.findall(r"<tr class='(best|)'><td class=''>(\d+)</td><td class='l'>", html)
    assert [int(cut) for _, cut in rows] == [r["cut"] for r in res["rows"]]
    assert [int(cut) for flag, cut in rows if flag] == [res["best"]["cut"]]
    # the input itself, which the CLI compares the best cut with: a row of the table and the same note
    # (1.0 against 1.0 on 4 val samples: a tie within noise); it was only a dotted line in the plot
    assert "<td class='l'>the input itself (16x16 pixels)</td>" in html
    assert "the input itself (16x16 pixels, val acc 1.0000) and the best cut (1.0000) tie within noise" in html


def test_report_out_never_replaces_a_users_file_unasked(fit_run, tmp_path):
    """--out notes.txt replaced the user's file with HTML; --out DIR failed after the work."""
    from rehead.report import write_report
    from rehead.rundir import RunExists
    run = fit_run.dir
    (tmp_path / "notes.txt").write_text("my notes")
    with pytest.raises(RunExists, match="give an .html file or a folder"):
        write_report(run, out=tmp_path / "notes.txt", echo=lambda *_: None)
    assert (tmp_path / "notes.txt").read_text() == "my notes"
    assert write_report(run, out=tmp_path, echo=lambda *_: None) == tmp_path / "report.html"
    with pytest.raises(RunExists, match="exists: pass --overwrite"):
        write_report(run, out=tmp_path / "report.html", echo=lambda *_: None)
    assert write_report(run, out=tmp_path / "report.html", echo=lambda *_: None, overwrite=True).exists()
    from rehead.config import ConfigError
    with pytest.raises(ConfigError, match="--gallery must be >= 0"):  # -5 showed all but the last 5 cards
        write_report(run, gallery=-5, echo=lambda *_: None)


def test_a_read_only_run_gets_its_report_elsewhere(fit_run, tmp_path, monkeypatch):
    """`report SHARED_RUN --out mine.html` failed with "Permission denied: RUN/.tmp-..." on a colleague's
    read-only run: the plots were drawn into the run directory. (Tests run as root, which may write
    anywhere: the run directory reads as read-only through os.access, as it does for a plain user.)"""
    import shutil
    from rehead.report import html as report_html, write_report
    run = tmp_path / "shared"
    shutil.copytree(fit_run.dir, run, ignore=shutil.ignore_patterns("*.png", ".lock"))
    access = report_html.os.access
    monkeypatch.setattr(report_html.os, "access", lambda p, mode: False if Path(p) == run else access(p, mode))
    made = {p.name for p in run.iterdir()}
    path = write_report(run, out=tmp_path / "mine.html", echo=lambda *_: None)
    check_self_contained(path.read_text())
    assert "<h2>Confusion matrix</h2>" in path.read_text() and path.read_text().count("data:image/png") >= 3
    assert {p.name for p in run.iterdir()} == made  # nothing drawn into the run


def test_report_refuses_what_is_not_a_run(tmp_path):
    from rehead.report import write_report
    from rehead.run import BadRun
    with pytest.raises(BadRun, match="not a rehead run directory"):
        write_report(tmp_path)


def test_report_of_an_lr_find_folder_points_to_its_plot(tmp_path):
    """It said "not a rehead run directory (no config.yaml)" of the folder `rehead lr-find --out` wrote."""
    from rehead.report import write_report
    from rehead.run import BadRun
    (tmp_path / "lr_find.json").write_text(json.dumps({"lrs": [1e-4, 1e-2], "losses": [0.7, 0.5], "suggested": 3e-3}))
    (tmp_path / "lr_find.png").write_bytes(b"png")
    with pytest.raises(BadRun, match=r"is a `rehead lr-find` output, not a run directory: open its plot, "
                                     rf"{tmp_path / 'lr_find.png'} \(the figures are in .*lr_find.json \(suggested "
                                     r"learning rate 0.003\)\)"):
        write_report(tmp_path)


def test_report_of_an_ensemble_names_the_members_temperatures(fit_run, tmp_path):
    """It said "no temperature applied (T = 1): the run has no temperature.json"; each member's T was applied."""
    import shutil
    from safetensors.torch import load_file, save_file
    from rehead.ensemble import make_ensemble
    from rehead.report import write_report
    members = []
    for i, t in enumerate((1.104, 1.032)):
        d = shutil.copytree(fit_run.dir, tmp_path / f"m{i}", ignore=shutil.ignore_patterns("*.png", ".lock"))
        (d / "temperature.json").write_text(json.dumps({"temperature": t}))
        w = load_file(str(d / "model.safetensors"))  # another model: a copy of a member is refused
        save_file({k: v * (1 + i / 2) if k.startswith("head.") and v.is_floating_point() else v
                   for k, v in w.items()}, str(d / "model.safetensors"))
        members.append(d)
    html = write_report(make_ensemble(members, tmp_path / "ens"), echo=lambda *_: None).read_text()
    check_self_contained(html)
    assert "each member's temperature applied (T = 1.104, 1.032)" in html
    assert "no temperature applied" not in html


def test_report_of_an_ensemble_shows_the_temperatures_the_ensemble_applies(fit_run, tmp_path, monkeypatch):
    """The report read members/N/temperature.json itself, a second account of what ``Ensemble.member_temperatures``
    applies: it shows the ensemble's own (here patched, so the two would differ), and none for one made before."""
    import shutil
    from safetensors.torch import load_file, save_file
    from rehead.ensemble import Ensemble, make_ensemble
    from rehead.report import write_report
    members = []
    for i in range(2):
        d = shutil.copytree(fit_run.dir, tmp_path / f"m{i}", ignore=shutil.ignore_patterns("*.png", ".lock"))
        w = load_file(str(d / "model.safetensors"))  # another model: a copy of a member is refused
        save_file({k: v * (1 + i / 2) if k.startswith("head.") and v.is_floating_point() else v
                   for k, v in w.items()}, str(d / "model.safetensors"))
        members.append(d)
    ens = make_ensemble(members, tmp_path / "ens", echo=lambda *_: None)
    monkeypatch.setattr(Ensemble, "member_temperatures", property(lambda self: [2.5, 0.75]))
    html = write_report(ens, echo=lambda *_: None).read_text()
    assert "each member's temperature applied (T = 2.500, 0.750)" in html
    cfg = ens / "config.yaml"  # an ensemble made before members' T were applied: their raw probabilities
    cfg.write_text(cfg.read_text().replace("mean calibrated probability", "mean probability"))
    html = write_report(ens, echo=lambda *_: None).read_text()
    assert "this ensemble was made before each member's temperature was applied" in html and "2.500" not in html


def test_report_cli_prints_the_path(fit_run):
    from typer.testing import CliRunner
    from rehead.cli import app
    r = CliRunner().invoke(app, ["report", str(fit_run.dir), "--gallery", "3"])
    assert r.exit_code == 0, r.output
    assert str(fit_run.dir / "report.html") in r.output
    assert check_self_contained((fit_run.dir / "report.html").read_text()).cards.__len__() == 3
