"""One self-contained ``report.html`` per run: every image is embedded as a data: URI, no
script, no stylesheet or font fetched, so it opens offline and can be mailed as one file.

What a report shows depends on the run's ``kind`` (config.yaml): a fit run gets its
learning curves, LR finder, confusion matrix, calibration (a reliability diagram) and a gallery
of val predictions; probe, rank and compare runs get their results table and plot. The plots are
also written next to the report as PNG files.
"""
from __future__ import annotations

import base64
import csv
import datetime
import io
import json
import os
import tempfile
from html import escape
from pathlib import Path

import yaml

from . import plots

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.muted{color:#777;font-size:.9em}table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}
tr.best td{background:#fff3d6;font-weight:600}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em;max-height:30em}
img.plot{max-width:100%;border:1px solid #eee}.finding{background:#eef6ff;border-left:4px solid #1f77b4;padding:.6em 1em}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.card{width:132px;font-size:.72em;border:4px solid;border-radius:4px;padding:3px;overflow:hidden}
.card.ok{border-color:#2e7d32}.card.bad{border-color:#c62828}.card img{width:100%;display:block}
.card .t{max-height:9em;overflow:hidden;white-space:pre-wrap}
"""


_SCRATCH: list = []  # a temporary folder for plots of a run directory this user cannot write


def plot_path(d: Path, name: str) -> Path:
    """Where a report's plot is drawn: in the run directory (kept beside the run), or, for a read-only
    run (a colleague's shared one), in a temporary folder: the report embeds it either way."""
    if os.access(d, os.W_OK):
        return d / name
    if not _SCRATCH:
        _SCRATCH.append(tempfile.TemporaryDirectory(prefix="rehead-report-"))
    return Path(_SCRATCH[0].name) / name


def data_uri(png_path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(png_path).read_bytes()).decode()


def img(png_path: Path, alt: str) -> str:
    return f'<img class="plot" src="{data_uri(png_path)}" alt="{escape(alt)}">'


def table(rows: list[dict], cols: list[str] | None = None, best=None, left=()) -> str:
    """An HTML table; ``best(row) -> bool`` highlights rows; columns in ``left`` align left."""
    if not rows:
        return "<p class='muted'>no rows</p>"
    cols = cols or list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"
        return escape(str(v)) if v is not None else ""
    head = "".join(f"<th class='{'l' if c in left else ''}'>{escape(c)}</th>" for c in cols)
    body = "".join(
        f"<tr class='{'best' if best and best(r) else ''}'>"
        + "".join(f"<td class='{'l' if c in left else ''}'>{fmt(r.get(c))}</td>" for c in cols) + "</tr>"
        for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def kv_table(d: dict) -> str:
    return table([{"key": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v} for k, v in d.items()],
                 ["key", "value"], left=("key", "value"))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            try:
                r[k] = int(v) if v.lstrip("-").isdigit() else float(v)
            except (ValueError, AttributeError):
                pass
    return rows


# -- sections per kind ---------------------------------------------------------------------
def _fit_sections(d: Path, cfg: dict, gallery: int, echo) -> list[tuple[str, str]]:
    secs = []
    if (d / "summary.json").exists():
        s = json.loads((d / "summary.json").read_text())
        secs.append(("Metrics", kv_table({k: v for k, v in s.items() if k != "skipped"})))
    if (d / "metrics.csv").exists():
        rows = read_csv(d / "metrics.csv")
        if rows:
            p = plots.plot_curves(rows, plot_path(d, "curves.png"))
            secs.append(("Learning curves",
                         img(p, "learning curves") + "<p class='muted'>dashed lines: phase boundaries</p>"
                         + "<details><summary>per-epoch table</summary>" + table(rows) + "</details>"))
    lr = _lr_find(d)
    if lr:
        secs.append(("Learning-rate finder", lr))
    secs += _evaluation_sections(d, gallery, echo)
    return secs


def _lr_find(d: Path) -> str:
    j, p = d / "lr_find.json", d / "lr_find.png"
    note = ""
    if j.exists():
        lf = json.loads(j.read_text())
        if not p.exists():
            p = plots.plot_lr_find(lf["lrs"], lf["losses"], lf.get("suggested"), plot_path(d, "lr_find.png"))
        if lf.get("suggested"):
            note = f"<p>suggested learning rate: <b>{lf['suggested']:.3g}</b></p>"
    return (img(p, "learning-rate finder") + note) if p.exists() else ""


def _evaluation_sections(d: Path, gallery: int, echo) -> list[tuple[str, str]]:
    from ..runs import open_run
    try:
        run = open_run(d)
        items, labels = run.val_split()
        missing = [i for i in items if run.modality == "image" and not Path(i).exists()]
        if missing:
            return [("Validation predictions", f"<p class='muted'>{len(missing)} val image(s) are no longer at "
                                               f"their paths (e.g. {escape(missing[0])}): no confusion matrix "
                                               "or gallery</p>")]
        what = {"regression": "the predicted-vs-true plot", "multilabel": "the per-label scores"}.get(
            run.task, "the confusion matrix and gallery")
        echo(f"evaluating {len(items)} val samples for {what}")
        res = run.evaluate(items, labels)
    except Exception as e:  # a report should still come out for a run that cannot be re-evaluated
        return [("Validation predictions", f"<p class='muted'>could not evaluate the run: {escape(str(e))}</p>")]
    if res.get("task") == "regression":
        p = plots.plot_scatter(res["targets"], res["predictions"], res["classes"][0], plot_path(d, "scatter.png"))
        return [("Predicted vs true", f"<p>RMSE <b>{res['rmse']:.4g}</b>, MAE <b>{res['mae']:.4g}</b>, "
                 f"R² <b>{res['r2']:.4f}</b> on {res['n']} val samples</p>" + img(p, "predicted vs true"))]
    if res.get("task") == "multilabel":
        from ..tasks import macro_said
        per_label = [{"label": c, **m} for c, m in res["per_label"].items()]
        return [("Per-label scores", f"<p>micro F1 <b>{res['micro_f1']:.4f}</b>, macro F1 <b>{res['macro_f1']:.4f}</b>, "
                 f"mAP <b>{res['map']:.4f}</b> on {res['n']} val samples (F1 at p &ge; 0.5{escape(macro_said(res))})</p>"
                 + table(per_label, left=("label",)))]
    p = plots.plot_confusion(res["confusion_matrix"], res["classes"], plot_path(d, "confusion.png"))
    per_class = [{"class": c, **{k: (int(v) if k == "support" else v) for k, v in m.items()}}
                 for c, m in res["per_class"].items()]
    secs = [("Confusion matrix", f"<p>accuracy <b>{res['accuracy']:.4f}</b> on {res['n']} val samples</p>"
             + img(p, "confusion matrix") + table(per_class, left=("class",)))]
    if "ece" in res:
        secs.append(("Calibration", _calibration(d, res, run)))
    secs.append(("Validation predictions", _gallery(res, run.modality, gallery)))
    return secs


def _calibration(d: Path, res: dict, run) -> str:
    """ECE before / after the run's temperature on val, a reliability diagram, and the held-out
    test figures when the fit had a test split: val is where T was fitted, so its figures flatter."""
    from ..calibration import reliability
    correct = [p == t for p, t in zip(res["predictions"], res["targets"])]
    members = _member_temperatures(run)
    t = res["temperature"] if members is None else 1.0  # an ensemble adds no T of its own
    applied = f"each member's T ({', '.join(f'{m:.3f}' for m in members)})" if members else None
    p = plots.plot_reliability(reliability(res["probs_uncalibrated"], correct), reliability(res["probs"], correct),
                               applied or t, plot_path(d, "reliability.png"))
    s = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
    cal = s.get("calibration") or {}
    if members is not None:
        where = _ensemble_calibration(members)
    elif t != 1.0:
        where = ("<p class='muted'>figures from the <b>val</b> split, the split T was fitted on: the calibrated "
                 "ECE is optimistic. Held-out data measures it fairly: <code>rehead evaluate RUN DATA</code>.</p>")
    else:
        where = ("<p class='muted'>figures from the <b>val</b> split; no temperature applied (T = 1): "
                 + escape(cal.get("reason") or "the run has no temperature.json") + ".</p>")
    html = (f"<p>{escape(applied) if applied else f'temperature <b>{t:.3f}</b>'}; val ECE "
            f"<b>{res['ece_uncalibrated']:.4f}</b> uncalibrated, <b>{res['ece']:.4f}</b> with T; NLL "
            f"{res['nll_uncalibrated']:.4f} &rarr; {res['nll']:.4f} "
            f"({res['n']} samples, 15 equal-width bins, top label)</p>" + where)
    if "test_ece" in s:
        html += (f"<p>held-out <b>test</b> split (scored once at the end of the fit): ECE "
                 f"{s['test_ece_uncalibrated']:.4f} uncalibrated, <b>{s['test_ece']:.4f}</b> with T; NLL "
                 f"{s['test_nll_uncalibrated']:.4f} &rarr; {s['test_nll']:.4f} ({s.get('test_n')} samples)</p>")
    return html + img(p, "reliability diagram")


def _member_temperatures(run) -> list[float] | None:
    """An ensemble's members' own T, each applied to its member's probabilities before the mean, as the
    ensemble applies them (``Ensemble.member_temperatures``: an ensemble has no temperature.json of its
    own, and its report said none was applied). [] for an ensemble made before members were calibrated
    (it averages their raw probabilities); None for one model."""
    from ..ensemble import Ensemble
    if not isinstance(run, Ensemble):
        return None
    return run.member_temperatures if run.calibrated else []


def _ensemble_calibration(members: list[float]) -> str:
    if not members:
        return ("<p class='muted'>figures from the <b>val</b> split; the members' probabilities are averaged "
                "uncalibrated (T = 1: this ensemble was made before each member's temperature was applied); "
                "make it again with <code>rehead ensemble</code> to apply them.</p>")
    return ("<p class='muted'>figures from the <b>val</b> split; each member's temperature applied (T = "
            + ", ".join(f"{m:.3f}" for m in members) + ") to its own probabilities before the mean; the ensemble "
            "adds none of its own. Each T was fitted on its member's val split: where that is this split, the "
            "calibrated ECE is optimistic. Held-out data measures it fairly: <code>rehead evaluate RUN DATA</code>."
            "</p>")


def _gallery(res: dict, modality: str, limit: int) -> str:
    """Mistakes first, the most confident first; then correct ones, the least confident first."""
    cards = list(zip(res["items"], res["predictions"], res["targets"], res["probs"]))
    wrong = sorted((c for c in cards if c[1] != c[2]), key=lambda c: -c[3])
    right = sorted((c for c in cards if c[1] == c[2]), key=lambda c: c[3])
    shown = (wrong + right)[:limit]
    classes = res["classes"]
    html = [f"<p>{len(wrong)} mistake(s) of {len(cards)}; showing {len(shown)}: "
            "<span style='color:#c62828'>wrong</span> (most confident first), then "
            "<span style='color:#2e7d32'>correct</span> (least confident first)</p><div class='gallery'>"]
    for item, pred, true, prob in shown:
        body = _thumb(item) if modality == "image" else f"<div class='t'>{escape(str(item)[:300])}</div>"
        html.append(f"<div class='card {'ok' if pred == true else 'bad'}'>{body}"
                    f"<div>pred <b>{escape(classes[pred])}</b> {prob:.2f}</div>"
                    f"<div>true {escape(classes[true])}</div></div>")
    return "".join(html) + "</div>"


def _thumb(path: str, side: int = 128) -> str:
    from ..data.images import decode
    try:  # a file or a reference into a shard / Parquet / datasets folder, decoded as training decodes it
        im = decode(path, side)
        im.thumbnail((side, side))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
    except Exception:  # noqa: BLE001
        return "<div class='t'>(unreadable)</div>"
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    return f'<img src="{uri}" alt="{escape(Path(path).name)}">'


def _results(d: Path) -> dict:
    p = d / "results.json"
    if not p.exists():
        from ..rundir import BadRun
        raise BadRun(f"{d} has no results.json: the experiment did not finish")
    return json.loads(p.read_text())


def _probe_sections(d: Path, cfg: dict, *_) -> list[tuple[str, str]]:
    r = _results(d)
    b = r["best"]
    from ..experiments.probe import input_note
    inp = r.get("input")  # older runs have no input record
    note = input_note(inp, b, r["n_val"]) if inp else None
    find = (f"<p class='finding'>best depth: <b>cut {b['cut']} ({escape(b['stage'])})</b>, val accuracy "
            f"{b['val_acc']:.4f}. Use it: <code>{escape(b['fit_command'])}</code>"
            + (f"<br>{escape(note)}" if note else "") + "</p>")
    if b.get("fit_note"):
        find += f"<p class='muted'>{escape(b['fit_note'])}</p>"
    if b.get("within_noise"):
        find += (f"<p class='muted'>cuts {', '.join(map(str, b['within_noise']))} score within two standard errors "
                 f"of it on {r['n_val']} val samples: this val split cannot tell them apart.</p>")
    if r.get("test"):  # older runs have no test record
        find += f"<p class='muted'>{escape(r['test']['text'])}</p>"
    timing = (f"<p class='muted'>features for all {len(r['rows'])} depths from one pass: "
              f"{r['extract_seconds']:.1f}s; {len(r['rows'])} probes: {r['probe_seconds']:.1f}s</p>")
    cols = ["cut", "stage", "dim", "train_acc", "val_acc", "val_loss", "fit_seconds"]
    # the input itself: the baseline every cut has to beat (it was only a dotted line in the plot)
    rows = r["rows"] + ([{**inp, "cut": "none", "stage": f"the input itself ({inp['what']})"}] if inp else [])
    return [("Best depth", find), ("Accuracy against depth", img(d / "probe.png", "probe plot")
             + table(rows, cols, best=lambda x: x["cut"] == b["cut"], left=("stage",)) + timing)]


def _rank_sections(d: Path, cfg: dict, *_) -> list[tuple[str, str]]:
    r = _results(d)
    from ..experiments.rank import finding
    find = f"<p class='finding'>{escape(finding(r['rows'], r.get('agreement', {})))}</p>"
    a = r.get("agreement", {})
    if a.get("within_noise"):
        find += (f"<p class='muted'>{escape(', '.join(a['within_noise']))}: probe val accuracy within two standard "
                 f"errors of the best probe's ({escape(a['probe_best'])}) on {r['n_val']} val samples: this val split "
                 "cannot order them, so whether the probe agrees with LogME among them is noise.</p>")
    for m in r.get("repeated", []):
        find += f"<p class='muted'>{escape(m)} is listed more than once in --models: ranked once.</p>"
    for dup in r.get("duplicates", []):
        find += (f"<p class='muted'>{escape(dup['model'])} is the same cut as {escape(dup['same_as'])} "
                 f"(cut {dup['cut']}): ranked once.</p>")
    if r.get("test"):
        find += f"<p class='muted'>{escape(r['test']['text'])}</p>"
    cols = ["rank", "model", "cut", "stage", "dim", "input_size", "logme", "probe_val_acc", "probe_test_acc",
            "probe_train_acc", "seconds"]
    secs = [("Ranking", find + img(d / "rank.png", "rank plot")
             + table(r["rows"], cols, best=lambda x: x["rank"] == 1, left=("model", "stage")))]
    if r.get("unavailable"):
        secs.append(("Not loadable here", table(r["unavailable"], left=("model", "reason"))))
    return secs


def _compare_sections(d: Path, cfg: dict, *_) -> list[tuple[str, str]]:
    r = _results(d)
    cols = ["fraction", "n_train", "arm", "val_acc", "val_loss", "test_acc", "strategy", "epochs", "seconds"]
    how = f"<p class='muted'>{escape(r['protocol'])}</p>" if r.get("protocol") else ""
    return [("Transfer vs scratch", f"<p class='finding'>{escape(r['finding']['text'])}</p>" + how
             + img(d / "compare.png", "compare plot") + table(r["rows"], cols, left=("arm", "strategy")))]


SECTIONS = {"fit": _fit_sections, "soup": _fit_sections, "ensemble": _fit_sections, "probe": _probe_sections,
            "rank": _rank_sections, "compare": _compare_sections}


def write_report(run_dir, out=None, gallery: int = 60, echo=print, overwrite: bool = False) -> Path:
    """Write ``report.html`` (and the PNG plots) for a run directory; returns the report's path."""
    from ..run import read_config
    d = Path(run_dir)
    _not_lr_find(d)
    cfg = read_config(d)
    if gallery < 0:  # a negative slice would quietly drop the last cards
        from ..config import ConfigError
        raise ConfigError(f"--gallery must be >= 0 (val predictions shown), got {gallery}")
    out = report_path(d, out, overwrite)  # before any work: a file of the user's is never replaced unasked
    kind = cfg.get("kind", "fit")
    if kind not in SECTIONS:
        from ..rundir import BadRun
        raise BadRun(f"{d} is a {kind!r} run: reports exist for {', '.join(SECTIONS)}")
    secs = SECTIONS[kind](d, cfg, gallery, echo)
    summary = cfg.get("data_summary")
    if summary:
        secs.append(("Data", kv_table(summary)))
    secs.append(("Configuration", "<pre>" + escape(yaml.safe_dump(
        {k: v for k, v in cfg.items() if k != "data_summary"}, sort_keys=False)) + "</pre>"))
    title = f"rehead {kind}: {d.resolve().name}"
    model = cfg.get("model") or ", ".join(cfg.get("models", []))
    body = "".join(f"<h2>{escape(t)}</h2>\n{h}\n" for t, h in secs)
    html = (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{escape(title)}</title>\n"
            f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{escape(title)}</h1>\n"
            f"<p class='muted'>{escape(str(model))} &middot; {escape(str(d))} &middot; report written "
            f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>\n{body}</body>\n</html>\n")
    from ..rundir import atomic_write_bytes
    atomic_write_bytes(out, html.encode("utf-8"))
    return out


def _not_lr_find(d: Path) -> None:
    """A `rehead lr-find --out` folder holds its plot and figures, no run: said, with where they are (it was
    "not a rehead run directory (no config.yaml)")."""
    if (d / "config.yaml").exists() or not any((d / f).exists() for f in ("lr_find.png", "lr_find.json")):
        return
    from ..rundir import BadRun
    try:
        lr = json.loads((d / "lr_find.json").read_text()).get("suggested")
    except (OSError, ValueError, AttributeError):
        lr = None
    said = f" (suggested learning rate {lr:.3g})" if isinstance(lr, (int, float)) else ""
    raise BadRun(f"{d} is a `rehead lr-find` output, not a run directory: open its plot, {d / 'lr_find.png'} "
                 f"(the figures are in {d / 'lr_find.json'}{said}); `rehead fit --find-lr` runs the same test "
                 "inside a run, whose report shows it")


def report_path(run_dir: Path, out, overwrite: bool) -> Path:
    """Where the report goes: RUN_DIR/report.html (rehead's own, rewritten), a folder's report.html, or an
    .html file; an existing file elsewhere only with ``overwrite``."""
    from ..rundir import RunExists
    if out is None:
        return run_dir / "report.html"
    out = Path(out)
    if out.is_dir():
        out = out / "report.html"
    elif out.suffix.lower() not in (".html", ".htm"):
        raise RunExists(f"--out {out}: give an .html file or a folder to write report.html into")
    if out.exists() and not overwrite and out.resolve() != (run_dir / "report.html").resolve():
        raise RunExists(f"{out} exists: pass --overwrite to replace it, or choose another --out")
    if not out.parent.is_dir():
        raise RunExists(f"--out {out}: the folder {out.parent} does not exist")
    return out
