"""Hostile inputs and faults against the ``rehead`` CLI (issue 12, "Must show").

Every case builds its input in a temp dir from ../shared/datasets, runs the CLI in a
subprocess (``python -m rehead ...``, own process group, per-case timeout) and classifies
what happened as one of

  handled          a clear ``error: ...`` line naming the file/option and exit != 0 when an
                   error is expected; or exit 0 with a verified correct answer
  silent_wrong     exit 0 but the answer is wrong (checked in summary.json / split.json /
                   labels.json / --json output, not from the exit code)
  hang             ran past its timeout
  data_lost        a user file deleted or overwritten, or a run directory mixed
  traceback        "Traceback (most recent call last)" in the output
  unclear_error    exit != 0 but no ``error:`` line, or one that does not name the file/option
  unexpected_error a clean error where the input is acceptable and should have worked
  skipped          the case could not be set up here (the reason is given)

and writes ``bench/results/hostile.json``: counts, wall time, load average and one row per case.

    PYTHONPATH=.:bench python bench/hostile.py              # every case (~15-25 min on 2 busy cores)
    python bench/hostile.py --list                          # names, kinds, expectations
    python bench/hostile.py --only img_fifo --only 'cache_*'  # a few (fnmatch patterns); JSON not written
    python bench/hostile.py --src /tmp/snapshot             # run another checkout (PYTHONPATH=SRC)
    python bench/hostile.py --keep                          # keep the temp dir to look at
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("REHEAD_DATASETS", REPO.parent / "shared" / "datasets"))
HYM = DATASETS / "hymenoptera_data"
PHRASE = DATASETS / "financial_phrasebank_allagree"
GOLUB = DATASETS / "golub_leukemia" / "expression.csv"
TB = "Traceback (most recent call last)"

HANDLED, SILENT, HANG, LOST, TRACE = "handled", "silent_wrong", "hang", "data_lost", "traceback"
UNCLEAR, UNEXPECTED, SKIPPED, HARNESS = "unclear_error", "unexpected_error", "skipped", "harness_error"
OUTCOMES = [HANDLED, SILENT, HANG, LOST, TRACE, UNCLEAR, UNEXPECTED, SKIPPED, HARNESS]
COUNT_KEYS = {HANDLED: "handled_cleanly", SILENT: "silent_wrong", HANG: "hangs", LOST: "data_lost",
              TRACE: "raw_tracebacks", UNCLEAR: "unclear_errors", UNEXPECTED: "unexpected_errors",
              SKIPPED: "skipped", HARNESS: "harness_errors"}


# ------------------------------------------------------------------------------------------
# running the CLI
# ------------------------------------------------------------------------------------------
@dataclass
class R:
    args: list
    rc: int | None
    out: str
    err: str
    secs: float
    timed_out: bool = False

    @property
    def text(self) -> str:
        return self.out + "\n" + self.err

    @property
    def last_err(self) -> str:
        lines = [l.strip().strip("│").strip() for l in self.err.splitlines()]
        lines = [l for l in lines if l and not set(l) <= set("╭╮╰╯─│ ") and not l.startswith("╭─")]
        return lines[-1][:300] if lines else ""

    def json(self):
        """The JSON document printed on stdout (anything before its first [ or { ignored)."""
        s = self.out
        starts = [i for i in (s.find("["), s.find("{")) if i >= 0]
        if not starts:
            raise ValueError("no JSON on stdout")
        return json.loads(s[min(starts):])


@dataclass
class V:
    outcome: str
    detail: str = ""
    r: R | None = None


class Ctx:
    def __init__(self, root: Path, src: str | None, timeout: float):
        self.root = root
        self.src = src
        self.timeout = timeout
        self.cache = root / "cache"                  # shared warm cache for cases not about the cache
        self._fix: dict = {}
        self._lock = threading.RLock()   # fixtures build other fixtures
        self.mounts: list[Path] = []
        self.procs: list[subprocess.Popen] = []

    # -- processes -----------------------------------------------------------------------
    def env(self, cache=None, extra=None) -> dict:
        e = dict(os.environ)
        e["REHEAD_CACHE"] = str(cache or self.cache)
        e.pop("REHEAD_DEBUG", None)
        e["PYTHONUNBUFFERED"] = "1"
        e["COLUMNS"] = "200"
        e.setdefault("HF_HUB_OFFLINE", "1")
        if self.src:
            e["PYTHONPATH"] = self.src + os.pathsep + e.get("PYTHONPATH", "")
        e.update(extra or {})
        return e

    def popen(self, args, cache=None, cwd=None, env=None) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "rehead", *map(str, args)]
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             cwd=str(cwd or self.root), env=self.env(cache, env), start_new_session=True, text=True,
                             errors="replace")
        p._t0 = time.time()  # type: ignore[attr-defined]
        p._args = list(map(str, args))  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def wait(self, p, timeout=None) -> R:
        timeout = timeout or self.timeout
        try:
            out, err = p.communicate(timeout=max(1.0, timeout - (time.time() - p._t0)))
            return R(p._args, p.returncode, out, err, time.time() - p._t0)
        except subprocess.TimeoutExpired:
            kill_group(p)
            out, err = p.communicate()
            return R(p._args, None, out, err, time.time() - p._t0, timed_out=True)

    def run(self, *args, cache=None, cwd=None, env=None, timeout=None) -> R:
        return self.wait(self.popen(args, cache=cache, cwd=cwd, env=env), timeout)

    def fit(self, data, out, *extra, cache=None, timeout=None, env=None) -> R:
        return self.run("fit", data, "--strategy", "extract", "--quiet", "--out", out, *extra,
                        cache=cache, timeout=timeout, env=env)

    # -- places ----------------------------------------------------------------------------
    def d(self, name: str) -> Path:
        """A case's own folder. Its name is neutral (a hash), so that words checked for in
        messages ("changed", "schedule", ...) cannot come from the case's name in a path."""
        p = self.root / "cases" / ("c" + hashlib.sha1(name.encode()).hexdigest()[:6])
        if not p.exists():
            p.mkdir(parents=True)
            with open(self.root / "cases" / "index.txt", "a") as f:
                f.write(f"{p.name} {name}\n")
        return p

    def fixture(self, name, build):
        with self._lock:
            if name not in self._fix:
                try:
                    self._fix[name] = build()
                except Exception as e:  # noqa: BLE001
                    self._fix[name] = e
            v = self._fix[name]
        if isinstance(v, Exception):
            raise FixtureFailed(f"fixture {name}: {v}")
        return v

    def mount(self, target: Path, how: str) -> bool:
        """how: 'tmpfs:SIZE' or 'ro' (a read-only bind mount of target onto itself)."""
        target.mkdir(parents=True, exist_ok=True)
        cmd = (["mount", "-t", "tmpfs", "-o", f"size={how[6:]}", "tmpfs", str(target)] if how.startswith("tmpfs:")
               else ["mount", "--bind", "-o", "ro", str(target), str(target)])
        ok = subprocess.run(cmd, capture_output=True).returncode == 0
        if ok and how == "ro":  # older mount(8) ignores ro on the first bind: remount
            subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], capture_output=True)
        if ok:
            self.mounts.append(target)
        return ok

    def umount_all(self):
        for m in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(m)], capture_output=True)
        self.mounts.clear()


class FixtureFailed(Exception):
    pass


def kill_group(p: subprocess.Popen, sig=signal.SIGKILL):
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ------------------------------------------------------------------------------------------
# verdict helpers
# ------------------------------------------------------------------------------------------
def _named(text: str, names) -> list:
    """names: strings, or tuples of alternatives; returns those not found (case-insensitive)."""
    low = text.lower()
    miss = []
    for n in names:
        alts = n if isinstance(n, tuple) else (n,)
        if not any(str(a).lower() in low for a in alts):
            miss.append(alts[0] if len(alts) == 1 else "|".join(map(str, alts)))
    return miss


def crash_or_hang(r: R) -> V | None:
    if r.timed_out:
        return V(HANG, f"no answer in {r.secs:.0f} s", r)
    if TB in r.text:
        return V(TRACE, "raw traceback", r)
    return None


def clean_error(r: R, *names) -> V | None:
    """None unless r is a clean error: exit != 0, an ``error:`` line, the names in stderr."""
    if r.rc in (0, None) or TB in r.text:
        return None
    usage = re.search(r"Invalid value for '(--[\w-]+)'|No such option|Missing (argument|option)", r.err)
    if usage and r.rc == 2:   # Click's usage error (a boxed message before any work): clear, names the option
        miss = _named(r.err, names)
        if miss:
            return V(UNCLEAR, f"usage error does not name {', '.join(miss)}", r)
        return V(HANDLED, "usage error (Click box, not an 'error:' line)", r)
    if not any(l.strip().lower().startswith("error") for l in r.err.splitlines()):
        return V(UNCLEAR, f"exit {r.rc} without an 'error:' line", r)
    miss = _named(r.err, names)
    if miss:
        return V(UNCLEAR, f"error does not name {', '.join(miss)}", r)
    return V(HANDLED, "clean error", r)


def expect_error(r: R, *names, silent_detail="exit 0 where an error was expected") -> V:
    v = crash_or_hang(r)
    if v:
        return v
    if r.rc == 0:
        return V(SILENT, silent_detail, r)
    return clean_error(r, *names)


def checked(check, r: R) -> V:
    """check(r) for an exit-0 run; a run directory or JSON that cannot be read is itself wrong."""
    try:
        return check(r)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:   # JSONDecodeError is a ValueError
        return V(SILENT, f"exit 0 but {type(e).__name__}: {e}"[:300], r)


def ok_or_error(r: R, check, *names) -> V:
    """Either a clean error naming names, or exit 0 and check(r) -> V."""
    v = crash_or_hang(r)
    if v:
        return v
    if r.rc != 0:
        return clean_error(r, *names)
    return checked(check, r)


def must_succeed(r: R, check) -> V:
    v = crash_or_hang(r)
    if v:
        return v
    if r.rc != 0:
        ce = clean_error(r)
        if ce and ce.outcome == HANDLED:
            return V(UNEXPECTED, "refused an acceptable input", r)
        return ce or V(UNEXPECTED, f"exit {r.rc}", r)
    return checked(check, r)


# -- run directory readers -------------------------------------------------------------------
def read_json(p):
    return json.loads(Path(p).read_text())


def split_items(run: Path) -> dict:
    """{'train': [...], 'val': [...], ...} from split.json (whatever its exact shape)."""
    s = read_json(run / "split.json")
    out = {}
    for k, v in s.items():
        if k not in ("train", "val", "valid", "test"):
            continue
        if isinstance(v, dict) and "items" in v:
            out[k] = list(v["items"])
        elif isinstance(v, list):
            out[k] = list(v)
    return out


def n_used(run: Path) -> int:
    s = split_items(run)
    return sum(len(v) for k, v in s.items() if k in ("train", "val"))


def classes(run: Path) -> list:
    lab = read_json(run / "labels.json")
    if isinstance(lab, dict):
        lab = lab.get("classes") or lab.get("labels") or list(lab)
    return list(lab)


def summary(run: Path) -> dict:
    return read_json(run / "summary.json")


def probs(r: R) -> dict:
    """{item basename or text: {label: prob}} from ``predict --json``; rows with an error map to None."""
    out = {}
    for row in r.json():
        key = Path(str(row["item"])).name if os.sep in str(row["item"]) else str(row["item"])
        out[key] = None if "error" in row else {t["label"]: float(t["prob"]) for t in row["top"]}
    return out


LEFT_OUT = r"empty|blank|label|drop|skip|missing|unlabel|ignor|left out"


def says_count(text: str, n: int, words=LEFT_OUT) -> bool:
    """Does some output line give the number n together with a word saying what was left out?"""
    for line in text.splitlines():
        if re.search(rf"(?<![\d.]){n}(?![\d.])", line) and re.search(words, line, re.I):
            return True
    return False


def tree_digest(d: Path) -> dict:
    """relative path -> sha256 of every regular file under d (links and pipes not followed)."""
    res = {}
    for root, dirs, files in os.walk(d):
        for f in files:
            p = Path(root) / f
            if p.is_symlink() or not p.is_file():
                continue
            res[str(p.relative_to(d))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return res


def lost(before: dict, after: dict) -> list:
    return [k for k, h in before.items() if after.get(k) != h]


# ------------------------------------------------------------------------------------------
# building inputs
# ------------------------------------------------------------------------------------------
def pick(cls: str, n: int, split="train", skip=0) -> list[Path]:
    return sorted((HYM / split / cls).glob("*.jpg"))[skip:skip + n]


def img_folder(dst: Path, n=8, classes_=("ants", "bees"), split="train", skip=0) -> Path:
    for c in classes_:
        (dst / c).mkdir(parents=True, exist_ok=True)
        for f in pick(c, n, split, skip):
            shutil.copy(f, dst / c / f.name)
    return dst


def rows_csv(path: Path, header, rows, encoding="utf-8", bom=False):
    import csv
    import io
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    data = buf.getvalue().encode(encoding)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


def phrase_rows(n=45, src="train", skip=0):
    """n (text, label) rows from financial_phrasebank_allagree, balanced over its classes."""
    import csv
    with open(PHRASE / f"{src}.csv", newline="", encoding="utf-8") as f:
        rows = [(r["text"], r["label"]) for r in csv.DictReader(f)]
    by = {}
    for t, l in rows:
        by.setdefault(l, []).append((t, l))
    labs = sorted(by)
    out = []
    per = n // len(labs)
    for l in labs:
        out += by[l][skip:skip + per]
    return out


def golub_rows(n_genes=20):
    import csv
    with open(GOLUB, newline="") as f:
        r = csv.reader(f)
        head = next(r)
        keep = 3 + n_genes  # patient, split, label, genes
        return head[:keep], [row[:keep] for row in r]


def png_bytes(width, height, bit_depth, color_type, rows: bytes, level=6) -> bytes:
    def chunk(t, data):
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, level)) + chunk(b"IEND", b"")


def bomb_png(path: Path, side=16000):
    """A valid 8-bit grey PNG of side x side black pixels (256 M pixels for 16000), a few hundred KB."""
    co = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    parts = []
    block = row * 500
    for _ in range(side // 500):
        parts.append(co.compress(block))
    parts.append(co.flush())
    idat = b"".join(parts)

    def chunk(t, data):
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def fifo(p: Path):
    os.mkfifo(p)


# ------------------------------------------------------------------------------------------
# fixtures (built once, shared read-only; cases that change a run copy it first)
# ------------------------------------------------------------------------------------------
def fx_imgs(c: Ctx) -> Path:
    return c.fixture("imgs", lambda: img_folder(c.root / "fx" / "imgs"))


def _fit_fixture(c: Ctx, name, data, *extra, cache=None):
    out = c.root / "fx" / name
    r = c.fit(data, out, *extra, cache=cache, timeout=max(c.timeout, 300))
    if r.rc != 0 or not (out / "model.safetensors").exists():
        raise RuntimeError(f"fit for fixture {name} failed (exit {r.rc}): {r.last_err}")
    return out


def fx_run(c: Ctx) -> Path:
    return c.fixture("run", lambda: _fit_fixture(c, "run", fx_imgs(c)))


def fx_run_seed1(c: Ctx) -> Path:
    return c.fixture("run_s1", lambda: _fit_fixture(c, "run_s1", fx_imgs(c), "--seed", "1"))


def fx_text_csv(c: Ctx) -> Path:
    def build():
        d = c.root / "fx" / "text"
        d.mkdir(parents=True, exist_ok=True)
        return rows_csv(d / "phrases.csv", ["text", "label"], phrase_rows(45))
    return c.fixture("text_csv", build)


def fx_text_run(c: Ctx) -> Path:
    return c.fixture("text_run", lambda: _fit_fixture(c, "text_run", fx_text_csv(c), "--model", "packaged:minilm"))


def fx_table(c: Ctx) -> Path:
    def build():
        d = c.root / "fx" / "table"
        d.mkdir(parents=True, exist_ok=True)
        h, rows = golub_rows(20)
        return rows_csv(d / "expr20.csv", h, rows)
    return c.fixture("table", build)


def fx_table_run(c: Ctx) -> Path:
    return c.fixture("table_run", lambda: _fit_fixture(c, "table_run", fx_table(c), "--model", "tabular:mlp-20-16x1",
                                                        "--id-columns", "patient"))


def interrupted_run(c: Ctx, name: str, data: Path, sig=signal.SIGKILL, epochs=40) -> tuple[Path, R]:
    """Start a live-backbone fit (strategy head, so epochs take seconds), wait for the first
    checkpoint.pt, then send ``sig``. Returns the run dir and the killed process's result."""
    out = c.d(name) / "run"
    # --augment light and --no-cache: every epoch runs the backbone live (seconds), even when the
    # shared cache already holds these images' features (a head trained on cached features would
    # finish its 25-40 epochs before the signal arrives)
    p = c.popen(["fit", data, "--strategy", "head", "--augment", "light", "--no-cache", "--epochs", epochs,
                 "--quiet", "--out", out])
    t0 = time.time()
    while time.time() - t0 < max(c.timeout, 240):
        if (out / "checkpoint.pt").exists() or p.poll() is not None:
            break
        time.sleep(0.2)
    if p.poll() is None and (out / "checkpoint.pt").exists():
        time.sleep(0.5)
        finished_before = (out / "summary.json").exists() or p.poll() is not None
        kill_group(p, sig)   # the whole process group, as a terminal's Ctrl-C does
        r = c.wait(p, timeout=60 + (time.time() - p._t0))
        r.finished_before_signal = finished_before  # type: ignore[attr-defined]
        return out, r
    r = c.wait(p, timeout=1)
    raise FixtureFailed(f"no checkpoint.pt appeared (exit {r.rc}, timed out {r.timed_out}): {r.last_err}")


def fx_interrupted(c: Ctx) -> Path:
    def build():
        data = img_folder(c.root / "fx" / "imgs_int")
        out, _ = interrupted_run(c, "fx_interrupted", data)
        return out
    return c.fixture("interrupted", build)


def copy_run(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------------
# the cases
# ------------------------------------------------------------------------------------------
CASES: list = []


def case(name, kind, expected):
    def deco(fn):
        CASES.append((name, kind, expected, fn))
        return fn
    return deco


# -- image files among good ones: fit must skip them, name them and count the rest ------------
def fit_with_bad(c: Ctx, name: str, make_bad, good=16, timeout=None) -> V:
    data = img_folder(c.d(name) / "data")
    bad = make_bad(data)          # returns the names that should be skipped (basenames)
    out = c.d(name) / "run"
    r = c.fit(data, out, timeout=timeout)

    def check(r):
        n = n_used(out)
        cl = classes(out)
        if cl != ["ants", "bees"]:
            return V(SILENT, f"classes {cl}", r)
        if n != good:
            return V(SILENT, f"{n} samples used, {good} readable", r)
        s = summary(out)
        txt = r.text + json.dumps(s)
        miss = [b for b in bad if b not in txt]
        return V(HANDLED, "skipped and counted" + (f" (not named: {', '.join(miss)})" if miss else ""), r)
    return ok_or_error(r, check, *bad)


@case("img_corrupt_jpeg", "image", "skipped and named, 16 good images used")
def _(c):
    def bad(d):
        src = pick("ants", 1, skip=20)[0].read_bytes()
        (d / "ants" / "truncated.jpg").write_bytes(src[: len(src) // 3])
        return ["truncated.jpg"]
    return fit_with_bad(c, "img_corrupt_jpeg", bad)


@case("img_garbage_jpeg", "image", "random bytes named .jpg: skipped and named")
def _(c):
    def bad(d):
        (d / "bees" / "garbage.jpg").write_bytes(os.urandom(5000))
        return ["garbage.jpg"]
    return fit_with_bad(c, "img_garbage_jpeg", bad)


@case("img_zero_byte", "image", "skipped and named")
def _(c):
    def bad(d):
        (d / "ants" / "empty.jpg").write_bytes(b"")
        return ["empty.jpg"]
    return fit_with_bad(c, "img_zero_byte", bad)


@case("img_dir_named_jpg", "image", "a directory x.jpg is not an image: skipped")
def _(c):
    def bad(d):
        (d / "ants" / "x.jpg").mkdir()
        (d / "ants" / "x.jpg" / "notes.txt").write_text("hi")
        return ["x.jpg"]
    return fit_with_bad(c, "img_dir_named_jpg", bad)


@case("img_fifo", "image", "a named pipe x.jpg is never opened (no hang)")
def _(c):
    def bad(d):
        fifo(d / "bees" / "x.jpg")
        return ["x.jpg"]
    return fit_with_bad(c, "img_fifo", bad, timeout=min(c.timeout, 120))


@case("img_dangling_symlink", "image", "skipped and named")
def _(c):
    def bad(d):
        os.symlink(d / "nowhere.jpg", d / "ants" / "dangling.jpg")
        return ["dangling.jpg"]
    return fit_with_bad(c, "img_dangling_symlink", bad)


@case("img_symlink_loop", "image", "a.jpg -> b.jpg -> a.jpg: skipped and named")
def _(c):
    def bad(d):
        os.symlink("loop_b.jpg", d / "ants" / "loop_a.jpg")
        os.symlink("loop_a.jpg", d / "ants" / "loop_b.jpg")
        return ["loop_a.jpg"]
    return fit_with_bad(c, "img_symlink_loop", bad)


@case("img_dir_symlink_loop", "image", "a folder link to its parent: no endless walk, 16 images")
def _(c):
    def bad(d):
        os.symlink("..", d / "ants" / "up")
        return []
    return fit_with_bad(c, "img_dir_symlink_loop", bad)


@case("img_valid_symlink", "image", "a symlink to a real image is a normal image (17 used)")
def _(c):
    def bad(d):
        os.symlink(pick("ants", 1, skip=30)[0], d / "ants" / "linked.jpg")
        return []
    return fit_with_bad(c, "img_valid_symlink", bad, good=17)


@case("img_bomb", "image", "256 Mpx PNG (decompression bomb): skipped and named, fast")
def _(c):
    def bad(d):
        bomb_png(d / "bees" / "bomb.png")
        return ["bomb.png"]
    return fit_with_bad(c, "img_bomb", bad)


@case("img_text_file_and_hidden_files", "image", "README.txt, .DS_Store, ._x.jpg ignored")
def _(c):
    def bad(d):
        (d / "README.txt").write_text("my photos")
        (d / "ants" / ".DS_Store").write_bytes(os.urandom(100))
        (d / "ants" / "._0013035.jpg").write_bytes(b"\x00\x05\x16\x07" + os.urandom(100))
        return []
    return fit_with_bad(c, "img_text_file_and_hidden_files", bad)


@case("img_dot_folder", "image", ".ipynb_checkpoints / .thumbs are not classes; dot-folders in a class skipped")
def _(c):
    def bad(d):
        for dot in (".ipynb_checkpoints", ".thumbs"):
            (d / dot).mkdir()
            for f in pick("bees", 3, skip=40):
                shutil.copy(f, d / dot / f.name)
        (d / "ants" / ".cache").mkdir()
        for f in pick("ants", 3, skip=40):
            shutil.copy(f, d / "ants" / ".cache" / f.name)
        return []
    return fit_with_bad(c, "img_dot_folder", bad)


@case("img_odd_formats", "image", "grey, RGBA, palette PNG, CMYK JPEG, .JPG/.jpeg: all used (20)")
def _(c):
    from PIL import Image

    def bad(d):
        srcs = pick("ants", 4, skip=50) + pick("bees", 2, skip=50)
        im = [Image.open(s).convert("RGB") for s in srcs]
        im[0].convert("L").save(d / "ants" / "grey.png")
        im[1].convert("RGBA").save(d / "ants" / "rgba.png")
        im[2].convert("P").save(d / "ants" / "palette.png")
        im[3].convert("CMYK").save(d / "ants" / "cmyk.jpg")
        im[4].save(d / "bees" / "UPPER.JPG")
        im[5].save(d / "bees" / "long.jpeg")
        return []
    return fit_with_bad(c, "img_odd_formats", bad, good=22)


@case("img_unicode_names", "image", "a class 'abeilles é' and file names with spaces: kept exactly")
def _(c):
    data = c.d("img_unicode_names") / "data"
    img_folder(data)
    os.rename(data / "bees", data / "abeilles é")
    for i, f in enumerate(sorted((data / "ants").iterdir())[:3]):
        os.rename(f, f.with_name(f"my photo {i} ü.jpg"))
    out = c.d("img_unicode_names") / "run"
    r = c.fit(data, out)

    def check(r):
        cl = classes(out)
        if sorted(cl) != sorted(["ants", "abeilles é"]):
            return V(SILENT, f"classes {cl}", r)
        n = n_used(out)
        return V(HANDLED, "ok", r) if n == 16 else V(SILENT, f"{n} of 16 used", r)
    return must_succeed(r, check)


def fit_expect_fail(c, name, build, *names, cls_forbidden=(), min_classes=2):
    data = c.d(name) / "data"
    data.mkdir(parents=True, exist_ok=True)
    build(data)
    out = c.d(name) / "run"
    r = c.fit(data, out)
    v = crash_or_hang(r)
    if v:
        return v
    if r.rc == 0:
        try:
            cl = classes(out)
            s = summary(out)
        except Exception as e:  # noqa: BLE001
            return V(SILENT, f"exit 0 but run unreadable: {e}", r)
        bad = [x for x in cls_forbidden if x in cl]
        if bad or len(cl) < min_classes:
            return V(SILENT, f"trained classes {cl}, val_acc {s.get('val_acc')}", r)
        if _named(r.text, names):
            return V(SILENT, f"classes {cl}; dropped {names} without naming it", r)
        return V(HANDLED, f"went on with {cl}, named the dropped class", r)
    return clean_error(r, *names)


@case("img_empty_class", "image", "an empty class folder 'wasps': error naming it (or dropped and named)")
def _(c):
    def b(d):
        img_folder(d)
        (d / "wasps").mkdir()
    return fit_expect_fail(c, "img_empty_class", b, "wasps", cls_forbidden=("wasps",))


@case("img_class_all_unreadable", "image", "2 classes, bees all unreadable: error (not a 1-class 'val acc 1.0')")
def _(c):
    def b(d):
        img_folder(d, classes_=("ants",))
        (d / "bees").mkdir()
        for i in range(6):
            (d / "bees" / f"b{i}.jpg").write_bytes(os.urandom(3000))
    return fit_expect_fail(c, "img_class_all_unreadable", b, "bees", cls_forbidden=("bees",))


@case("img_third_class_unreadable", "image", "3rd class all unreadable: error naming it (or dropped and named)")
def _(c):
    def b(d):
        img_folder(d)
        (d / "wasps").mkdir()
        for i in range(6):
            (d / "wasps" / f"w{i}.jpg").write_bytes(b"")
    return fit_expect_fail(c, "img_third_class_unreadable", b, "wasps", cls_forbidden=("wasps",))


@case("img_single_class", "image", "error: a classifier needs two classes")
def _(c):
    return fit_expect_fail(c, "img_single_class", lambda d: img_folder(d, classes_=("ants",)), ("class", "ants"))


@case("img_no_images", "image", "class folders of .txt files: error naming the folder")
def _(c):
    def b(d):
        for cl in ("ants", "bees"):
            (d / cl).mkdir()
            (d / cl / "a.txt").write_text("x")
    return fit_expect_fail(c, "img_no_images", b, ("no image", "no images", "image"))


@case("img_empty_folder", "image", "empty data folder: error naming it")
def _(c):
    return fit_expect_fail(c, "img_empty_folder", lambda d: None, "data")


@case("data_missing_path", "cli", "DATA does not exist: error naming it")
def _(c):
    r = c.fit(c.root / "no_such_folder", c.d("data_missing_path") / "run")
    return expect_error(r, "no_such_folder")


@case("img_one_image_per_class", "image", "1 image per class: error (cannot split) or a clear note")
def _(c):
    def b(d):
        img_folder(d, n=1)
    name = "img_one_image_per_class"
    data = c.d(name) / "data"
    b(data)
    out = c.d(name) / "run"
    r = c.fit(data, out)

    def check(r):
        s = split_items(out)
        if not s.get("val"):
            return V(SILENT, "exit 0 with an empty val split", r)
        return V(HANDLED, f"val {len(s['val'])}", r)
    return ok_or_error(r, check, ("class", "sample", "image"))


# -- decoding: compare predictions on the same pixels in different encodings ------------------
def fx_uncertain(c: Ctx) -> Path:
    """The val image the fixture run is least sure about: a saturated P(ants)=1.000 would hide
    a wrong decoding, a P(ants) near 0.5 shows it."""
    def build():
        cands = pick("ants", 6, split="val") + pick("bees", 6, split="val")
        r = c.run("predict", fx_run(c), *cands, "--json", "--top-k", "2")
        if r.rc != 0:
            raise RuntimeError(f"predict failed: {r.last_err}")
        p = probs(r)
        return min(cands, key=lambda f: abs((p.get(f.name) or {}).get("ants", 9) - 0.5))
    return c.fixture("uncertain", build)


def decode_case(c, name, make, tol=0.02):
    """make(dir, rgb8: PIL.Image) -> (reference file, hostile file, what a wrong decoder sees).
    Predict on the three: the hostile file must score like the reference (within tol) and
    closer to it than to the wrong rendering."""
    from PIL import Image
    run = fx_run(c)
    d = c.d(name)
    src = fx_uncertain(c)
    ref, hostile, wrong = make(d, Image.open(src).convert("RGB"))
    r = c.run("predict", run, ref, hostile, wrong, "--json", "--top-k", "2")

    def check(r):
        p = probs(r)
        pr, ph = p.get(ref.name), p.get(hostile.name)
        pwrong = (p.get(wrong.name) or {}).get("ants", float("nan"))
        if ph is None:
            return V(UNEXPECTED, f"{hostile.name} not decoded (row error)", r)
        if pr is None:
            return V(HARNESS, "reference not decoded", r)
        a = pr.get("ants", 0.0)
        b = ph.get("ants", 0.0)
        if not all(map(lambda x: x == x, [a, b])):
            return V(SILENT, "nan probability", r)
        note = f"P(ants) {b:.3f} vs reference {a:.3f}, wrong decoding {pwrong:.3f}"
        if abs(a - pwrong) < 2 * tol:
            note += " (reference and wrong decoding too close to tell)"
        if pwrong == pwrong and abs(b - pwrong) < abs(b - a):
            return V(SILENT, note, r)
        if abs(a - b) <= tol:
            return V(HANDLED, note, r)
        return V(SILENT, note, r)
    return must_succeed(r, check)


def flat_png(d: Path, name: str, size, value) -> Path:
    from PIL import Image
    p = d / name
    Image.new("RGB", size, (value,) * 3).save(p)
    return p


def grey16_maker(suffix: str):
    """decode_case's inputs for a 16-bit grey image saved as ``suffix``: the 8-bit reference, the
    16-bit file, and what convert('RGB') makes of I;16 (values clipped at 255: the wrong answer)."""
    def make(d, im):
        import numpy as np
        from PIL import Image
        g = im.convert("L")
        ref = d / "grey8.png"
        g.save(ref)
        a16 = np.asarray(g, dtype=np.uint16) * 257
        h = d / f"grey16{suffix}"
        Image.fromarray(a16.astype(np.uint16)).save(h)
        clipped = d / "clipped.png"
        Image.fromarray(np.clip(a16, 0, 255).astype(np.uint8)).convert("RGB").save(clipped)
        return ref, h, clipped
    return make


@case("img_16bit_grey_png", "image", "16-bit grey PNG scores like its 8-bit version (not white)")
def _(c):
    return decode_case(c, "img_16bit_grey_png", grey16_maker(".png"))


@case("img_48bit_rgb_png", "image", "16-bit-per-channel RGB PNG scores like its 8-bit version")
def _(c):
    import numpy as np

    def make(d, im):
        ref = d / "rgb8.png"
        im.save(ref)
        a = np.asarray(im, dtype=np.uint16) * 257
        h, w, _ = a.shape
        raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))
        hp = d / "rgb48.png"
        hp.write_bytes(png_bytes(w, h, 16, 2, raw))
        return ref, hp, flat_png(d, "white.png", im.size, 255)
    return decode_case(c, "img_48bit_rgb_png", make)


@case("img_16bit_tiff", "image", "16-bit grey TIFF scores like its 8-bit version")
def _(c):
    return decode_case(c, "img_16bit_tiff", grey16_maker(".tif"))


@case("img_float_tiff", "image", "float32 TIFF in [0,1] scores like its 8-bit version")
def _(c):
    import numpy as np
    from PIL import Image

    def make(d, im):
        g = im.convert("L")
        ref = d / "grey8.png"
        g.save(ref)
        h = d / "float.tif"
        f = np.asarray(g, dtype=np.float32) / 255.0
        Image.fromarray(f, mode="F").save(h)
        wrong = d / "truncated_to_int.png"        # convert('RGB') of floats in [0, 1]: 0 or 1, nearly black
        Image.fromarray(f.astype(np.uint8)).convert("RGB").save(wrong)
        return ref, h, wrong
    return decode_case(c, "img_float_tiff", make, tol=0.05)


@case("img_exif_rotated", "image", "EXIF orientation 6 applied: scores like the upright photo")
def _(c):
    from PIL import Image

    def make(d, im):
        from PIL import ImageOps
        stored = im.transpose(Image.Transpose.ROTATE_90)   # stored sideways; orientation 6 turns it back
        exif = Image.Exif()
        exif[0x0112] = 6
        h = d / "exif6.jpg"
        stored.save(h, quality=95, exif=exif)
        ref = d / "upright.png"                             # the JPEG's own pixels, turned as EXIF says
        ImageOps.exif_transpose(Image.open(h)).convert("RGB").save(ref)
        sideways = d / "sideways.png"                       # the same pixels, EXIF ignored
        Image.open(h).convert("RGB").save(sideways)
        assert Image.open(ref).size == im.size
        return ref, h, sideways
    return decode_case(c, "img_exif_rotated", make)


# -- bad rows: refused, or left out and the run checks out ------------------------------------
# Many cases below judge alike: a clean error naming some words, or exit 0 and a few facts about
# the run (or the --json answer). Each fact is a test: test(r) returns what is wrong, or None.
EMPTY_LABEL = ("label", "empty")


def judged(ok, *tests):
    """A check for ok_or_error / must_succeed: tests run in order (a later one may rely on what an
    earlier one vouched for); the first fault is SILENT, else HANDLED with ok (or ok(r))."""
    def check(r):
        for test in tests:
            wrong = test(r)
            if wrong:
                return V(SILENT, wrong, r)
        return V(HANDLED, ok(r) if callable(ok) else ok, r)
    return check


def good_classes(out: Path, bad=None, n=None):
    """labels.json has no class for which bad(x) holds and, given n, exactly n classes."""
    def test(r):
        cl = classes(out)
        if (bad and any(bad(x) for x in cl)) or (n is not None and len(cl) != n):
            return f"classes {cl!r}"
        return None
    return test


def uses(out: Path, n: int, detail="{got} rows used, {n} labelled", count=n_used):
    """count(out), the train+val rows by default, is n."""
    def test(r):
        got = count(out)
        return detail.format(got=got, n=n) if got != n else None
    return test


def counted(n: int, detail="dropped without a count", words=LEFT_OUT):
    """Some output line gives the n rows left out (see says_count)."""
    return lambda r: None if says_count(r.text, n, words) else detail


def scored(n: int, detail: str):
    """``evaluate --json`` scored n rows (detail gets the n it gave as {got})."""
    def test(r):
        got = r.json().get("n")
        return detail.format(got=got) if got != n else None
    return test


def mentions(pattern: str, detail):
    """The output matches pattern (any case); else detail, or detail(r)."""
    return lambda r: None if re.search(pattern, r.text, re.I) else (detail(r) if callable(detail) else detail)


def _blank_class(x):   # what the image-CSV case refuses; text and table labels must also be trimmed
    return not str(x).strip() or str(x).lower() in ("nan", "none")


def _bad_class(x):   # blank, or with spaces around it
    return _blank_class(x) or str(x) != str(x).strip()


# -- image CSVs and folder layouts --------------------------------------------------------------
def img_csv(c, d: Path, rows_extra=(), n=8, split=None, empty_labels=0) -> Path:
    data = img_folder(d / "imgs", n=n)
    rows = []
    for cl in ("ants", "bees"):
        for i, f in enumerate(sorted((data / cl).glob("*.jpg"))):
            lab = cl
            if empty_labels and cl == "bees" and i < empty_labels:
                lab = ""
            row = [f"imgs/{cl}/{f.name}", lab]
            if split:
                row.append(split(cl, i))
            rows.append(row)
    rows += list(rows_extra)
    return rows_csv(d / "images.csv", ["path", "label"] + (["split"] if split else []), rows)


def img_csv_fit(c, name, **kw):
    """fit on an image CSV made by img_csv(**kw); returns (result, run dir)."""
    d = c.d(name)
    csvp = img_csv(c, d, **kw)
    out = d / "run"
    return c.fit(csvp, out), out


@case("img_csv_empty_labels", "image", "image CSV, 3 empty label cells: refused, or dropped with a count; never a class ''")
def _(c):
    r, out = img_csv_fit(c, "img_csv_empty_labels", empty_labels=3)
    check = judged("dropped with a count", good_classes(out, _blank_class), uses(out, 13),
                   counted(3, "3 unlabelled rows dropped without a count"))
    return ok_or_error(r, check, EMPTY_LABEL)


@case("img_csv_missing_file", "image", "image CSV row pointing at a missing file: skipped and named, or error naming it")
def _(c):
    r, out = img_csv_fit(c, "img_csv_missing_file", rows_extra=[["imgs/ants/not_there.jpg", "ants"]])

    def named(r):
        return None if "not_there" in r.text + json.dumps(summary(out)) else "missing file not named"
    return ok_or_error(r, judged("skipped and named", uses(out, 16, "{got} used"), named), "not_there")


@case("img_train_val_test_folders", "image", "train/val/test folders: val from val/, test never used for selection")
def _(c):
    d = c.d("img_train_val_test_folders") / "data"
    img_folder(d / "train", n=8)
    img_folder(d / "val", n=3, split="val")
    img_folder(d / "test", n=3, split="val", skip=10)
    out = c.d("img_train_val_test_folders") / "run"
    r = c.fit(d, out)

    def check(r):
        s = split_items(out)
        val = s.get("val", [])
        if any("/test/" in str(x) for x in val + s.get("train", [])):
            return V(SILENT, "test images in the train/val split (used for selection)", r)
        if not any("/val/" in str(x) for x in val):
            return V(SILENT, "val split not from val/", r)
        sm = summary(out)
        if not any("test" in k for k in sm):
            return V(HANDLED, "test not used (but not reported in summary.json)", r)
        return V(HANDLED, "val from val/, test reported", r)
    return must_succeed(r, check)


@case("img_train_test_folders", "image", "train/test folders, no val: val carved from train, test scored at the end")
def _(c):
    d = c.d("img_train_test_folders") / "data"
    img_folder(d / "train", n=8)
    img_folder(d / "test", n=4, split="val")
    out = c.d("img_train_test_folders") / "run"
    r = c.fit(d, out)

    def check(r):
        s = split_items(out)
        if any("/test/" in str(x) for x in s.get("val", [])):
            return V(SILENT, "val split = test/ (test used for early stopping and the kept epoch)", r)
        sm = summary(out)
        if not any("test" in k for k in sm):
            return V(SILENT, "val carved from train but test accuracy not reported", r)
        return V(HANDLED, "val from train, test reported", r)
    return must_succeed(r, check)


# -- text CSVs ----------------------------------------------------------------------------------
def text_fit(c, name, header, rows, *extra, encoding="utf-8", bom=False, fname="data.csv", raw: bytes | None = None):
    d = c.d(name)
    p = d / fname
    if raw is not None:
        p.write_bytes(raw)
    else:
        rows_csv(p, header, rows, encoding=encoding, bom=bom)
    out = d / "run"
    return c.fit(p, out, "--model", "packaged:minilm", *extra), out, p


@case("txt_empty_labels", "text", "4 empty label cells: refused or dropped with a count; never a class ''")
def _(c):
    rows = [list(x) for x in phrase_rows(45)]
    for i in (0, 16, 31, 40):
        rows[i][1] = ""
    r, out, _ = text_fit(c, "txt_empty_labels", ["text", "label"], rows)
    check = judged("dropped with a count", good_classes(out, _bad_class), uses(out, 41), counted(4))
    return ok_or_error(r, check, EMPTY_LABEL)


@case("txt_whitespace_labels", "text", "' positive', 'positive ' and '  ': one class per stripped label, blank refused/dropped")
def _(c):
    rows = [list(x) for x in phrase_rows(45)]
    for i in range(0, 45, 5):
        rows[i][1] = f" {rows[i][1]} " if i % 10 else f"{rows[i][1]}  "
    rows[3][1] = "   "
    r, out, _ = text_fit(c, "txt_whitespace_labels", ["text", "label"], rows)
    check = judged(lambda r: f"classes {classes(out)}", good_classes(out, _bad_class, n=3))
    return ok_or_error(r, check, ("label", "empty", "blank", "whitespace"))


@case("txt_bom", "text", "UTF-8 BOM (as Excel writes): accepted")
def _(c):
    r, out, _ = text_fit(c, "txt_bom", ["text", "label"], phrase_rows(45), bom=True)
    return must_succeed(r, lambda r: V(HANDLED, "ok", r) if sorted(classes(out)) == ["negative", "neutral", "positive"]
                        else V(SILENT, f"classes {classes(out)}", r))


@case("txt_latin1", "text", "latin-1 bytes: decoded, or an error naming the file and encoding")
def _(c):
    rows = [list(x) for x in phrase_rows(45)]
    for i in range(0, 45, 3):
        rows[i][0] = rows[i][0] + " café Zürich €"[:-2]
    r, out, p = text_fit(c, "txt_latin1", ["text", "label"], rows, encoding="latin-1")
    return ok_or_error(r, judged("decoded", good_classes(out, n=3)), p.name, ("utf-8", "utf8", "encoding", "decode"))


@case("txt_missing_column", "text", "CSV 'sentence,label': error saying which column it looked for")
def _(c):
    r, out, p = text_fit(c, "txt_missing_column", ["sentence", "label"], phrase_rows(45))
    return expect_error(r, ("text", "--text-column"))


@case("txt_duplicate_label_column", "text", "header text,label,label (the first all 'neutral'): error naming the "
                                           "duplicate, not a fit on the first namesake")
def _(c):
    rows = [(t, "neutral", y) for t, y in phrase_rows(45)]
    r, out, p = text_fit(c, "txt_duplicate_label_column", ["text", "label", "label"], rows)
    return expect_error(r, "duplicate", "label")


@case("txt_text_column_is_label_column", "text", "--text-column label: the model would read its answer; refused")
def _(c):
    r, out, p = text_fit(c, "txt_text_column_is_label_column", ["text", "label"], phrase_rows(45),
                         "--text-column", "label")
    return expect_error(r, "label")


@case("txt_unquoted_commas", "text", "texts with unquoted commas (rows longer than the header): error saying quote them")
def _(c):
    rows = [(t.replace(" , ", ", "), y) for t, y in phrase_rows(45)]
    raw = ("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows)).encode()
    r, out, p = text_fit(c, "txt_unquoted_commas", None, None, raw=raw)
    return expect_error(r, "quoted")


@case("txt_wrong_text_column", "text", "--text-column body: error naming 'body'")
def _(c):
    r, out, p = text_fit(c, "txt_wrong_text_column", ["text", "label"], phrase_rows(45), "--text-column", "body")
    return expect_error(r, "body")


@case("txt_wrong_label_column", "text", "--label-column sentiment: error naming 'sentiment'")
def _(c):
    r, out, p = text_fit(c, "txt_wrong_label_column", ["text", "label"], phrase_rows(45), "--label-column", "sentiment")
    return expect_error(r, "sentiment")


@case("txt_numeric_many_labels", "text", "45 distinct numeric labels: a hint (regression?) or an error")
def _(c):
    rows = [[t, f"{(i * 37 % 101) / 10:.1f}"] for i, (t, _) in enumerate(phrase_rows(45))]
    r, out, p = text_fit(c, "txt_numeric_many_labels", ["text", "label"], rows)

    def unsaid(r):
        return f"trained a {len(classes(out))}-class classifier on numbers without a word"
    check = judged("hint given", mentions(r"regress|numeric|distinct|continuous", unsaid))
    return ok_or_error(r, check, ("numeric", "regression", "distinct", "class"))


@case("txt_duplicates_conflicting", "text", "duplicated and conflicting rows: reported (or refused)")
def _(c):
    rows = [list(x) for x in phrase_rows(45)]
    rows += [list(rows[i]) for i in range(5)]                       # 5 exact duplicates
    flip = {"positive": "negative", "negative": "positive", "neutral": "positive"}
    rows += [[rows[i][0], flip[rows[i][1]]] for i in (20, 21, 22)]  # 3 conflicting
    r, out, p = text_fit(c, "txt_duplicates_conflicting", ["text", "label"], rows)

    def leak(r):
        tr, va = split_items(out).get("train", []), split_items(out).get("val", [])
        return f"not reported; {len(set(tr) & set(va))} texts in both train and val"
    return ok_or_error(r, judged("reported", mentions(r"duplicat|conflict", leak)), ("duplicat", "conflict"))


@case("txt_header_only", "text", "header but no rows: error naming the file")
def _(c):
    r, out, p = text_fit(c, "txt_header_only", ["text", "label"], [])
    return expect_error(r, "data.csv")


@case("txt_zero_byte_csv", "text", "0-byte CSV: error naming the file")
def _(c):
    r, out, p = text_fit(c, "txt_zero_byte_csv", None, None, raw=b"")
    return expect_error(r, "data.csv")


@case("txt_single_class", "text", "one label only: error")
def _(c):
    rows = [[t, "positive"] for t, _ in phrase_rows(45)]
    r, out, p = text_fit(c, "txt_single_class", ["text", "label"], rows)
    return expect_error(r, ("class", "positive"))


@case("txt_empty_text_cells", "text", "rows with empty text: dropped with a count or refused, never trained as ''")
def _(c):
    rows = [list(x) for x in phrase_rows(45)]
    for i in (2, 17, 33):
        rows[i][0] = ""
    r, out, p = text_fit(c, "txt_empty_text_cells", ["text", "label"], rows)

    def no_empty(r):
        items = sum(split_items(out).values(), [])
        return "trained on empty texts" if "" in items or "nan" in items else None
    check = judged("dropped with a count", no_empty,
                   counted(3, words=r"empty|blank|text|drop|skip|missing|ignor|left out"))
    return ok_or_error(r, check, ("text", "empty"))


@case("txt_ragged_quotes", "text", "an unterminated quote: error naming file (and line), or parsed sanely")
def _(c):
    rows = phrase_rows(45)
    import csv
    import io
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["text", "label"])
    w.writerows(rows[:20])
    buf.write('"this quote never ends,positive\n')
    w.writerows(rows[20:])
    r, out, p = text_fit(c, "txt_ragged_quotes", None, None, raw=buf.getvalue().encode())

    def check(r):
        n = n_used(out)
        if n < 40:
            return V(SILENT, f"only {n} of 46 rows used, nothing said", r) if "quote" not in r.text.lower() \
                else V(HANDLED, "said so", r)
        return V(HANDLED, f"{n} rows", r)
    return ok_or_error(r, check, "data.csv")


@case("txt_folder_train_test", "text", "folder with train.csv+test.csv: val carved from train, test scored once")
def _(c):
    d = c.d("txt_folder_train_test") / "data"
    d.mkdir(parents=True, exist_ok=True)
    rows_csv(d / "train.csv", ["text", "label"], phrase_rows(45))
    test = phrase_rows(15, src="test")
    rows_csv(d / "test.csv", ["text", "label"], test)
    out = c.d("txt_folder_train_test") / "run"
    r = c.fit(d, out, "--model", "packaged:minilm")

    def check(r):
        s = split_items(out)
        tt = {t for t, _ in test}
        inval = sum(1 for x in s.get("val", []) if x in tt)
        if inval:
            return V(SILENT, f"val split = test.csv ({inval} of {len(s.get('val', []))} val texts from test.csv): "
                             "test used for selection", r)
        sm = summary(out)
        if not any("test" in k for k in sm):
            return V(SILENT, "test.csv never scored / not in summary.json", r)
        return V(HANDLED, "val from train, test reported", r)
    return must_succeed(r, check)


@case("txt_image_model", "text", "an image backbone on a text CSV: error before any work")
def _(c):
    r = c.fit(fx_text_csv(c), c.d("txt_image_model") / "run", "--model", "packaged:efficientnet_lite0")
    return expect_error(r, ("text", "image", "modality"))


@case("img_text_model", "image", "a text backbone on an image folder: error before any work")
def _(c):
    r = c.fit(fx_imgs(c), c.d("img_text_model") / "run", "--model", "packaged:minilm")
    return expect_error(r, ("text", "image", "modality"))


# -- tables ---------------------------------------------------------------------------------------
def table_fit(c, name, mutate, *extra, model="tabular:mlp-20-16x1"):
    h, rows = golub_rows(20)
    rows = [list(x) for x in rows]
    h, rows = mutate(h, rows) or (h, rows)
    d = c.d(name)
    p = rows_csv(d / "table.csv", h, rows)
    out = d / "run"
    return c.fit(p, out, "--model", model, "--id-columns", "patient", *extra), out, p


@case("tab_empty_labels", "table", "3 empty label cells: refused or dropped with a count, never scored as a class")
def _(c):
    def m(h, rows):
        for i in (1, 40, 60):
            rows[i][2] = ""
    r, out, p = table_fit(c, "tab_empty_labels", m)

    def in_split(out):   # every split's rows, not only train+val
        return sum(len(v) for v in split_items(out).values())
    check = judged("dropped", good_classes(out, _bad_class),
                   uses(out, 69, "{got} rows in split.json, {n} labelled", count=in_split))
    return ok_or_error(r, check, EMPTY_LABEL)


@case("tab_nonnumeric_cell", "table", "'abc' in a feature cell: error naming column/row")
def _(c):
    def m(h, rows):
        rows[5][7] = "abc"
    r, out, p = table_fit(c, "tab_nonnumeric_cell", m)
    return expect_error(r, ("abc", golub_rows(20)[0][7]))


@case("tab_empty_feature_cell", "table", "an empty feature cell (default --missing error): error naming the column")
def _(c):
    def m(h, rows):
        rows[9][10] = ""
    r, out, p = table_fit(c, "tab_empty_feature_cell", m)
    return expect_error(r, ("empty", "missing", golub_rows(20)[0][10]))


@case("tab_split_column_absent", "table", "--split-column NAME that the table lacks: error naming it, not an unsplit table")
def _(c):
    r, out, p = table_fit(c, "tab_split_column_absent", lambda h, rows: None, "--split-column", "fold")
    return expect_error(r, ("fold",))


@case("tab_inf_cell", "table", "'inf' in a feature cell: error")
def _(c):
    def m(h, rows):
        rows[4][6] = "inf"
    r, out, p = table_fit(c, "tab_inf_cell", m)
    return expect_error(r, ("inf", "infinite"))


@case("tab_model_width_mismatch", "table", "tabular:mlp-10-... on 20 features: error naming both counts")
def _(c):
    r, out, p = table_fit(c, "tab_model_width_mismatch", lambda h, rows: None, model="tabular:mlp-10-16x1")
    return expect_error(r, "10", "20")


@case("tab_label_column_missing", "table", "--label-column nope: error naming it")
def _(c):
    r, out, p = table_fit(c, "tab_label_column_missing", lambda h, rows: None, "--label-column", "nope")
    return expect_error(r, "nope")


@case("tab_val_split_after_edit", "table", "evaluate RUN after its table was re-sorted: refused, not other rows scored")
def _(c):
    r, out, p = table_fit(c, "tab_val_split_after_edit", lambda h, rows: None)
    if r.rc != 0:
        return V(UNEXPECTED, f"the fit failed: {r.last_err}", r)
    h, rows = golub_rows(20)
    rows_csv(p, h, list(reversed(rows)))
    return expect_error(c.run("evaluate", out), "changed")


@case("tab_encoder_reads_label", "table", "an encoder pretrained with column y as a feature, then fit on y: refused")
def _(c):
    d = c.d("tab_encoder_reads_label")
    h, rows = golub_rows(20)
    j = h.index("label")  # a 0/1 label named y: numeric, so an encoder not told of it reads it as a feature
    rows = [r[:j] + [str(int(r[j] == "AML"))] + r[j + 1:] for r in rows]
    p = rows_csv(d / "table.csv", ["y" if x == "label" else x for x in h], rows)
    pre = c.run("pretrain", p, "--out", d / "enc", "--epochs", "2", "--width", "16", "--depth", "1",
                "--id-columns", "patient", "--rows", "all")
    if pre.rc != 0:
        return V(UNEXPECTED, f"pretrain failed: {pre.last_err}", pre)
    return expect_error(c.fit(p, d / "run", "--model", d / "enc", "--label-column", "y", "--id-columns", "patient"),
                        "'y'")


@case("tab_predict_wrong_feature_count", "table", "predict on a table lacking a feature column: error naming it")
def _(c):
    run = fx_table_run(c)
    h, rows = golub_rows(20)
    p = rows_csv(c.d("tab_predict_wrong_feature_count") / "short.csv", h[:-1], [r[:-1] for r in rows[:5]])
    r = c.run("predict", run, p, "--json")
    return expect_error(r, (h[-1], "feature", "column"))


@case("tab_predict_ok", "table", "predict on the table's own rows: finite probabilities, one row per table row")
def _(c):
    run = fx_table_run(c)
    h, rows = golub_rows(20)
    p = rows_csv(c.d("tab_predict_ok") / "five.csv", h, rows[:5])
    r = c.run("predict", run, p, "--json")

    def check(r):
        rows_ = r.json()
        ps = [t["prob"] for row in rows_ for t in row.get("top", [])]
        if len(rows_) != 5 or not ps or any(x != x for x in ps):
            return V(SILENT, f"{len(rows_)} rows, probs {ps[:4]}", r)
        return V(HANDLED, "5 rows", r)
    return must_succeed(r, check)


@case("tab_evaluate_empty_labels", "table", "evaluate on a table with 3 unlabelled rows: they are left out and counted")
def _(c):
    run = fx_table_run(c)
    h, rows = golub_rows(20)
    rows = [list(x) for x in rows]
    for i in (40, 50, 60):
        rows[i][2] = ""
    for row in rows:
        row[1] = "test"
    p = rows_csv(c.d("tab_evaluate_empty_labels") / "t.csv", h, rows)
    r = c.run("evaluate", run, p, "--json")
    check = judged("69 scored", scored(69, "scored n={got} of 69 labelled rows (72 rows)"))
    return ok_or_error(r, check, EMPTY_LABEL)


# -- evaluate -------------------------------------------------------------------------------------
@case("eval_csv_all_rows", "evaluate", "evaluate RUN images.csv (no split column) scores every row (16)")
def _(c):
    d = c.d("eval_csv_all_rows")
    p = img_csv(c, d)
    r = c.run("evaluate", fx_run(c), p, "--json")
    return must_succeed(r, judged("16 scored", scored(16, "scored {got} of 16 rows")))


@case("eval_csv_split_column", "evaluate", "images.csv with a split column: scores the 6 non-train rows")
def _(c):
    d = c.d("eval_csv_split_column")
    p = img_csv(c, d, split=lambda cl, i: "test" if i < 3 else "train")
    r = c.run("evaluate", fx_run(c), p, "--json")
    return must_succeed(r, judged("6 scored", scored(6, "scored {got} (6 test rows)")))


@case("eval_csv_unlabelled_rows", "evaluate", "3 unlabelled rows: left out and counted, never mapped to a class")
def _(c):
    d = c.d("eval_csv_unlabelled_rows")
    p = img_csv(c, d, empty_labels=3)
    r = c.run("evaluate", fx_run(c), p, "--json")
    return ok_or_error(r, judged("13 scored", scored(13, "scored n={got} (13 labelled of 16)")), EMPTY_LABEL)


@case("eval_folder_all", "evaluate", "evaluate RUN class-folder: all 16 images scored")
def _(c):
    r = c.run("evaluate", fx_run(c), fx_imgs(c), "--json")
    return must_succeed(r, judged("16", scored(16, "n={got} of 16")))


@case("eval_unknown_classes", "evaluate", "DATA with a class 'wasps' the run never saw: error naming it, or left out and named")
def _(c):
    d = c.d("eval_unknown_classes") / "data"
    img_folder(d)
    (d / "wasps").mkdir()
    for f in pick("bees", 3, skip=60):
        shutil.copy(f, d / "wasps" / f.name)
    r = c.run("evaluate", fx_run(c), d, "--json")

    def check(r):
        j = r.json()
        if j.get("n") == 16 and "wasps" in r.text:
            return V(HANDLED, "wasps left out, named", r)
        return V(SILENT, f"n={j.get('n')}, classes {j.get('classes')}", r)
    return ok_or_error(r, check, "wasps")


@case("eval_missing_data", "evaluate", "evaluate RUN nowhere/: error naming it")
def _(c):
    r = c.run("evaluate", fx_run(c), c.root / "nowhere")
    return expect_error(r, "nowhere")


@case("eval_not_a_run", "evaluate", "evaluate on a plain folder: error saying it is not a run")
def _(c):
    r = c.run("evaluate", fx_imgs(c))
    return expect_error(r, ("run", "config.yaml"))


@case("eval_text_folder_test", "evaluate", "evaluate a text run on a train/test folder: scores test.csv (15 rows)")
def _(c):
    d = c.d("eval_text_folder_test") / "data"
    d.mkdir(parents=True, exist_ok=True)
    rows_csv(d / "train.csv", ["text", "label"], phrase_rows(30, skip=60))
    rows_csv(d / "test.csv", ["text", "label"], phrase_rows(15, src="test"))
    r = c.run("evaluate", fx_text_run(c), d, "--json")
    return must_succeed(r, judged("15", scored(15, "n={got} (test.csv has 15)")))


# -- predict --------------------------------------------------------------------------------------
@case("predict_missing_file", "predict", "predict RUN missing.jpg: error naming it")
def _(c):
    r = c.run("predict", fx_run(c), c.root / "missing.jpg")
    return expect_error(r, "missing.jpg")


@case("predict_empty_folder", "predict", "predict RUN empty/: error")
def _(c):
    r = c.run("predict", fx_run(c), c.d("predict_empty_folder"))
    return expect_error(r, ("no image", "image", "predict_empty_folder"))


@case("predict_corrupt_and_good", "predict", "a corrupt file among good ones: its row names the error, good rows scored")
def _(c):
    d = c.d("predict_corrupt_and_good")
    good = pick("ants", 2, split="val")
    for f in good:
        shutil.copy(f, d / f.name)
    (d / "broken.jpg").write_bytes(os.urandom(2000))
    r = c.run("predict", fx_run(c), d, "--json")

    def check(r):
        p = probs(r)
        if "broken.jpg" not in p:
            return V(SILENT, "broken.jpg silently missing from the output", r)
        if p["broken.jpg"] is not None:
            return V(SILENT, f"broken.jpg got probabilities {p['broken.jpg']}", r)
        ok = [k for k, v in p.items() if v]
        return V(HANDLED, f"{len(ok)} scored, broken named", r) if len(ok) == 2 else V(SILENT, f"scored {ok}", r)
    return ok_or_error(r, check, "broken.jpg")


@case("predict_fifo", "predict", "predict on a named pipe x.jpg: no hang")
def _(c):
    d = c.d("predict_fifo")
    fifo(d / "x.jpg")
    r = c.run("predict", fx_run(c), d / "x.jpg", timeout=min(c.timeout, 90))
    return ok_or_error(r, lambda r: V(HANDLED, "answered", r), "x.jpg")


@case("predict_base_finite", "predict", "control: predict on val images gives finite probabilities summing to 1")
def _(c):
    r = c.run("predict", fx_run(c), *pick("bees", 3, split="val"), "--json")

    def check(r):
        for row in r.json():
            ps = [t["prob"] for t in row["top"]]
            if any(x != x for x in ps) or abs(sum(ps) - 1) > 1e-3:
                return V(SILENT, f"probs {ps}", r)
        return V(HANDLED, "ok", r)
    return must_succeed(r, check)


@case("predict_text_empty_string", "predict", "predict a text run on '': finite probabilities or a clear error")
def _(c):
    r = c.run("predict", fx_text_run(c), "", "--json")

    def check(r):
        ps = [t["prob"] for row in r.json() for t in row.get("top", [])]
        return V(HANDLED, "finite", r) if ps and all(x == x for x in ps) else V(SILENT, f"probs {ps}", r)
    return ok_or_error(r, check, ("empty", "text"))


@case("predict_text_csv", "predict", "predict a text run on a CSV of 3 texts: 3 rows scored, not the file's name")
def _(c):
    d = c.d("predict_text_csv")
    texts = [t for t, _ in phrase_rows(3, src="test")]
    r = c.run("predict", fx_text_run(c), rows_csv(d / "new.csv", ["text"], [[t] for t in texts]), "--json")
    return must_succeed(r, judged("3 rows scored", lambda r: None if sorted(probs(r)) == sorted(texts) and all(
        probs(r).values()) else f"rows {list(probs(r))[:4]}"))


@case("predict_text_long", "predict", "predict a text run on a 600-character text (longer than a file name may be)")
def _(c):
    text = " ".join(t for t, _ in phrase_rows(12, src="test"))[:600]
    r = c.run("predict", fx_text_run(c), text, "--json")
    return must_succeed(r, judged("scored", lambda r: None if probs(r).get(text) else "not scored"))


@case("predict_image_csv", "predict", "predict an image run on a CSV of 2 image paths: both scored, not the CSV as an image")
def _(c):
    d = c.d("predict_image_csv")
    imgs = pick("ants", 1, split="val") + pick("bees", 1, split="val")
    r = c.run("predict", fx_run(c), rows_csv(d / "imgs.csv", ["path"], [[str(f)] for f in imgs]), "--json")
    return must_succeed(r, judged("2 scored", lambda r: None if sorted(probs(r)) == sorted(f.name for f in imgs)
                                  and all(probs(r).values()) else f"rows {probs(r)}"))


@case("img_run_dir_in_data", "image", "a run directory (with report plots) inside the data folder: not a class, named")
def _(c):
    d = img_folder(c.d("img_run_dir_in_data") / "data")
    shutil.copytree(fx_run(c), d / "oldrun")
    for name in ("confusion.png", "curves.png"):
        shutil.copy(pick("ants", 1, skip=40)[0], d / "oldrun" / name)
    out = c.d("img_run_dir_in_data") / "out"
    r = c.fit(d, out)
    return ok_or_error(r, judged("not a class, named", good_classes(out, n=2), mentions("oldrun", "not named")),
                       "oldrun")


@case("eval_training_data_said", "evaluate", "evaluate RUN on its own training images: the score is said to be optimistic")
def _(c):
    r = c.run("evaluate", fx_run(c), fx_imgs(c))
    return must_succeed(r, judged("said", mentions(r"seen by this run|optimistic|training", "a score on training "
                                                   "data reported as if held out")))


# -- damaged run directories -----------------------------------------------------------------------
def damaged(c, name, damage, cmd="predict", names=("model.safetensors",)):
    run = copy_run(fx_run(c), c.d(name) / "run")
    damage(run)
    if cmd == "predict":
        r = c.run("predict", run, pick("ants", 1, split="val")[0], "--json")
    else:
        r = c.run("evaluate", run, "--json")
    return expect_error(r, *names)


@case("run_corrupt_safetensors", "rundir", "garbage model.safetensors: error naming it")
def _(c):
    return damaged(c, "run_corrupt_safetensors", lambda d: (d / "model.safetensors").write_bytes(os.urandom(3000)))


@case("run_truncated_safetensors", "rundir", "truncated model.safetensors: error naming it")
def _(c):
    def dmg(d):
        b = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(b[: len(b) // 2])
    return damaged(c, "run_truncated_safetensors", dmg)


@case("run_missing_safetensors", "rundir", "model.safetensors deleted: error naming it")
def _(c):
    return damaged(c, "run_missing_safetensors", lambda d: (d / "model.safetensors").unlink())


@case("run_weights_other_arch", "rundir", "a table run's model.safetensors in an image run: error naming it")
def _(c):
    src = fx_table_run(c) / "model.safetensors"
    return damaged(c, "run_weights_other_arch", lambda d: shutil.copy(src, d / "model.safetensors"))


@case("run_corrupt_config", "rundir", "config.yaml not YAML: error naming it")
def _(c):
    return damaged(c, "run_corrupt_config", lambda d: (d / "config.yaml").write_text("kind: fit\nhead: [\n  :::"),
                   cmd="evaluate", names=("config.yaml",))


@case("run_config_not_mapping", "rundir", "config.yaml a YAML list: error naming it")
def _(c):
    return damaged(c, "run_config_not_mapping", lambda d: (d / "config.yaml").write_text("- 1\n- 2\n"),
                   cmd="predict", names=("config.yaml",))


@case("run_corrupt_labels", "rundir", "labels.json not JSON: error naming it")
def _(c):
    return damaged(c, "run_corrupt_labels", lambda d: (d / "labels.json").write_text('["ants", "be'),
                   names=("labels.json",))


@case("run_labels_wrong_count", "rundir", "labels.json with 3 labels for a 2-output head: error naming it")
def _(c):
    return damaged(c, "run_labels_wrong_count", lambda d: (d / "labels.json").write_text('["ants", "bees", "wasps"]'),
                   names=("labels.json",))


@case("run_corrupt_split", "rundir", "split.json not JSON: evaluate (on the val split) names it")
def _(c):
    return damaged(c, "run_corrupt_split", lambda d: (d / "split.json").write_text("{"), cmd="evaluate",
                   names=("split.json",))


# -- options -------------------------------------------------------------------------------------
def bad_option(c, name, opts, *names):
    out = c.d(name) / "run"
    r = c.fit(fx_imgs(c), out, *opts)
    v = expect_error(r, *names)
    if v.outcome == HANDLED and out.exists() and any(out.iterdir()):
        v = V(HANDLED, "clean error, but a run directory was left behind", r)
    return v


for _name, _opts, _names in [
    ("opt_lr_negative", ["--lr", "-1"], ("lr",)),
    ("opt_lr_zero", ["--lr", "0"], ("lr",)),
    ("opt_epochs_zero", ["--epochs", "0"], ("epochs",)),
    ("opt_schedule_typo", ["--schedule", "cosin"], (("cosin", "schedule"),)),
    ("opt_strategy_bogus", ["--strategy", "bogus"], (("bogus", "strategy"),)),
    ("opt_val_fraction_1_5", ["--val-fraction", "1.5"], (("val-fraction", "val_fraction"),)),
    ("opt_val_fraction_0", ["--val-fraction", "0"], (("val-fraction", "val_fraction"),)),
    ("opt_batch_size_0", ["--batch-size", "0"], (("batch-size", "batch_size"),)),
    ("opt_head_bogus", ["--head", "bogus"], (("bogus", "head"),)),
    ("opt_augment_bogus", ["--augment", "bogus"], (("bogus", "augment"),)),
    ("opt_precision_fp8", ["--precision", "fp8"], (("fp8", "precision"),)),
    ("opt_method_bogus", ["--method", "bogus"], (("bogus", "method"),)),
    ("opt_cut_too_deep", ["--cut", "99"], (("99", "cut"),)),
    ("opt_cut_unknown_name", ["--cut", "block99"], (("block99", "cut"),)),
    ("opt_dropout_1_5", ["--dropout", "1.5"], ("dropout",)),
    ("opt_workers_negative", ["--workers", "-1"], ("workers",)),
    ("opt_patience_negative", ["--patience", "-3"], ("patience",)),
    ("opt_missing_bogus", ["--missing", "bogus"], (("bogus", "missing"),)),
]:
    def _mk(name=_name, opts=_opts, names=_names):
        return lambda c: bad_option(c, name, opts, *names)
    case(_name, "option", f"fit {' '.join(_opts)}: error naming the option, no run dir")(_mk())


@case("opt_typo_then_fixed", "option", "--schedule cosin fails; the corrected command then runs (no half-written dir)")
def _(c):
    out = c.d("opt_typo_then_fixed") / "run"
    r1 = c.fit(fx_imgs(c), out, "--schedule", "cosin")
    v = crash_or_hang(r1)
    if v:
        return v
    r2 = c.fit(fx_imgs(c), out, "--schedule", "cosine")
    if r1.rc == 0:
        return V(SILENT, "--schedule cosin accepted", r1)
    return must_succeed(r2, lambda r: V(HANDLED, "corrected command ran", r) if (out / "summary.json").exists()
                        else V(SILENT, "exit 0 but no summary.json", r))


# -- models ----------------------------------------------------------------------------------------
@case("model_unknown_packaged", "model", "packaged:nope: error naming it")
def _(c):
    return expect_error(c.fit(fx_imgs(c), c.d("model_unknown_packaged") / "run", "--model", "packaged:nope"), "nope")


@case("model_bare_name", "model", "--model resnet18: error naming it (and how to spell a source)")
def _(c):
    return expect_error(c.fit(fx_imgs(c), c.d("model_bare_name") / "run", "--model", "resnet18"), "resnet18")


@case("model_timm_offline", "model", "timm:resnet18 offline: error saying how to use file:")
def _(c):
    r = c.fit(fx_imgs(c), c.d("model_timm_offline") / "run", "--model", "timm:resnet18")
    return ok_or_error(r, lambda r: V(HANDLED, "worked (network available?)", r), "file:")


@case("model_timm_empty", "model", "timm: with no name: error")
def _(c):
    return expect_error(c.fit(fx_imgs(c), c.d("model_timm_empty") / "run", "--model", "timm:"), "timm")


@case("model_file_missing", "model", "file:/nope.safetensors#timm:resnet18: error naming the path")
def _(c):
    return expect_error(c.fit(fx_imgs(c), c.d("model_file_missing") / "run", "--model",
                              f"file:{c.root}/nope.safetensors#timm:resnet18"), "nope.safetensors")


@case("model_file_garbage", "model", "file: weights that are garbage: error naming the file")
def _(c):
    p = c.d("model_file_garbage") / "w.safetensors"
    p.write_bytes(os.urandom(4096))
    return expect_error(c.fit(fx_imgs(c), c.d("model_file_garbage") / "run", "--model", f"file:{p}#timm:resnet18"),
                        "w.safetensors")


@case("model_run_dir_not_run", "model", "--model pointing at a plain folder: error")
def _(c):
    return expect_error(c.fit(fx_imgs(c), c.d("model_run_dir_not_run") / "run", "--model", str(fx_imgs(c))),
                        ("imgs", "model"))


# -- resume / interrupt -------------------------------------------------------------------------------
@case("sigint_then_resume", "fault", "Ctrl-C mid-fit: says how to resume, no traceback; --resume then finishes")
def _(c):
    data = img_folder(c.d("sigint_then_resume") / "data")
    try:
        out, r = interrupted_run(c, "sigint_then_resume", data, sig=signal.SIGINT, epochs=25)
    except FixtureFailed as e:
        return V(SKIPPED, str(e))
    v = crash_or_hang(r)
    if v:
        return V(v.outcome, "on Ctrl-C: " + v.detail, r)
    if r.rc == 0:
        if getattr(r, "finished_before_signal", False):
            return V(SKIPPED, "the fit finished before Ctrl-C reached it (rerun the case)", r)
        ep = max(0, len((out / "metrics.csv").read_text().splitlines()) - 1) if (out / "metrics.csv").exists() else 0
        return V(SILENT, f"exit 0 after Ctrl-C, nothing on stderr; metrics.csv has {ep} of 25 epochs, "
                         f"summary.json {'written' if (out / 'summary.json').exists() else 'absent'}; "
                         f"stdout: {r.out.strip()[-120:]!r}", r)
    if "--resume" not in r.text:
        return V(UNCLEAR, f"exit {r.rc} after Ctrl-C without saying how to resume", r)
    r2 = c.run("fit", "--resume", out, "--quiet", timeout=max(c.timeout, 300))
    return must_succeed(r2, lambda r: V(HANDLED, "resumed and finished", r) if (out / "summary.json").exists()
                        else V(SILENT, "resume exit 0 but no summary.json", r))


@case("resume_data_changed", "fault", "--resume after the data folder changed: stops and says so, or keeps split.json")
def _(c):
    data = img_folder(c.d("resume_data_changed") / "data")
    try:
        out, _ = interrupted_run(c, "resume_data_changed", data)
    except FixtureFailed as e:
        return V(SKIPPED, str(e))
    before = split_items(out) if (out / "split.json").exists() else {}
    for f in pick("ants", 4, skip=70):
        shutil.copy(f, data / "ants" / f.name)
    for f in sorted((data / "bees").iterdir())[:2]:
        f.unlink()
    r = c.run("fit", "--resume", out, "--quiet", timeout=max(c.timeout, 300))

    def check(r):
        after = split_items(out)
        if set(after.get("val", [])) != set(before.get("val", [])):
            moved = len(set(before.get("val", [])) & set(after.get("train", [])))
            return V(SILENT, f"re-split on resume: {moved} old val images now trained on", r)
        if not re.search(r"chang|differ|modif", r.text, re.I):
            return V(SILENT, "resumed on changed data without a word", r)
        return V(HANDLED, "kept split, said data changed", r)
    return ok_or_error(r, check, ("chang", "differ", "modif"))


@case("resume_corrupt_checkpoint", "fault", "--resume with a garbage checkpoint.pt: error naming it")
def _(c):
    try:
        run = copy_run(fx_interrupted(c), c.d("resume_corrupt_checkpoint") / "run")
    except FixtureFailed as e:
        return V(SKIPPED, str(e))
    (run / "checkpoint.pt").write_bytes(os.urandom(5000))
    r = c.run("fit", "--resume", run, "--quiet")
    return expect_error(r, "checkpoint.pt")


@case("resume_checkpoint_other_arch", "fault", "--resume with a checkpoint whose tensors have other shapes: error naming it")
def _(c):
    import torch
    try:
        run = copy_run(fx_interrupted(c), c.d("resume_checkpoint_other_arch") / "run")
    except FixtureFailed as e:
        return V(SKIPPED, str(e))
    ck = torch.load(run / "checkpoint.pt", weights_only=True, map_location="cpu")

    def warp(o):
        if isinstance(o, torch.Tensor) and o.is_floating_point() and o.dim() >= 1:
            return torch.zeros(*(s + 3 for s in o.shape))
        if isinstance(o, dict):
            return {k: warp(v) for k, v in o.items()}
        if isinstance(o, list):
            return [warp(v) for v in o]
        return o
    key = next((k for k in ("model", "state_dict", "weights") if isinstance(ck, dict) and k in ck), None)
    if key is None:
        return V(SKIPPED, f"checkpoint.pt layout unknown: {list(ck)[:6] if isinstance(ck, dict) else type(ck)}")
    ck[key] = warp(ck[key])
    torch.save(ck, run / "checkpoint.pt")
    r = c.run("fit", "--resume", run, "--quiet")
    return expect_error(r, "checkpoint.pt")


@case("resume_missing_dir", "fault", "--resume nowhere: error naming it")
def _(c):
    return expect_error(c.run("fit", "--resume", c.root / "nowhere_run"), "nowhere_run")


@case("resume_finished_run", "fault", "--resume a finished run: nothing to do (exit 0, run unchanged) or a clear error")
def _(c):
    run = copy_run(fx_run(c), c.d("resume_finished_run") / "run")
    before = tree_digest(run)
    r = c.run("fit", "--resume", run, "--quiet")

    def check(r):
        gone = lost(before, tree_digest(run))
        if "model.safetensors" in gone or "split.json" in gone:
            return V(SILENT, f"a finished run was retrained: {gone}", r)
        return V(HANDLED, "unchanged", r)
    return ok_or_error(r, check, "run")


# -- the feature cache ------------------------------------------------------------------------------
def _npys(cache: Path) -> list[Path]:
    return sorted((cache / "features").rglob("*.npy")) if (cache / "features").exists() else []


CACHE_TOL = 0.05


def cache_case(c, name, corrupt):
    """Cold fit A on its own cache, corrupt the cache, fit B on it: B's predictions must be
    finite and equal A's, within CACHE_TOL. Not 1e-6: a feature recomputed alone (batch of 1)
    differs from the batched original by ~1e-6, and the closed-form head (C chosen by CV, near
    hard margin on 12 samples) turns that into up to ~0.03 of probability."""
    import numpy as np
    d = c.d(name)
    cache = d / "cache"
    data = img_folder(d / "data")
    rA = c.fit(data, d / "runA", cache=cache)
    if rA.rc != 0:
        return V(SKIPPED, f"clean fit failed: {rA.last_err}", rA)
    files = _npys(cache)
    if not files:
        return V(SKIPPED, "no .npy feature files in the cache (layout changed?)", rA)
    what = corrupt(files, np)
    rB = c.fit(data, d / "runB", cache=cache)
    probe = pick("ants", 2, split="val") + pick("bees", 2, split="val")
    pa = c.run("predict", d / "runA", *probe, "--json", "--top-k", "2", cache=cache)

    def check(rB):
        pb = c.run("predict", d / "runB", *probe, "--json", "--top-k", "2", cache=cache)
        if pb.rc != 0 or TB in pb.text:
            return V(TRACE if TB in pb.text else UNEXPECTED, f"predict on run B failed: {pb.last_err}", pb)
        A, B = probs(pa), probs(pb)
        worst = 0.0
        for k in A:
            for lab, p in A[k].items():
                q = (B.get(k) or {}).get(lab, float("nan"))
                if q != q:
                    return V(SILENT, f"{what}: predict prints nan", pb)
                worst = max(worst, abs(p - q))
        if worst > CACHE_TOL:
            return V(SILENT, f"{what}: predictions differ from a clean run by {worst:.4f}", rB)
        return V(HANDLED, f"{what}: detected/recomputed (max prob difference {worst:.4f})", rB)
    return ok_or_error(rB, check, ("cache", ".npy"))


@case("cache_warm_equals_cold", "cache", "control: a warm-cache fit predicts exactly like the cold one")
def _(c):
    return cache_case(c, "cache_warm_equals_cold", lambda files, np: "untouched cache")


@case("cache_nan_feature", "cache", "a cached feature with a NaN: recomputed (or error), predictions finite and equal")
def _(c):
    def corrupt(files, np):
        for f in files:              # every file, so that a training sample is hit whatever the layout
            a = np.load(f)
            a.flat[0] = np.nan
            np.save(f, a)
        return "a NaN in cached features"
    return cache_case(c, "cache_nan_feature", corrupt)


@case("cache_swapped_feature", "cache", "a cached feature holding another sample's values: detected, predictions equal")
def _(c):
    def corrupt(files, np):
        arrs = [np.load(f) for f in files]
        if all(a.ndim == 2 and len(a) > 1 for a in arrs):   # shards of rows: each row takes its neighbour's values
            for f, a in zip(files, arrs):
                np.save(f, np.roll(a, 1, axis=0))
        else:                                # one file per sample: each takes the next file's values
            for f, a in zip(files, arrs[1:] + arrs[:1]):
                np.save(f, a)
        return "other samples' features"
    return cache_case(c, "cache_swapped_feature", corrupt)


@case("cache_truncated_feature", "cache", "a truncated .npy: recomputed, predictions equal")
def _(c):
    def corrupt(files, np):
        b = files[0].read_bytes()
        files[0].write_bytes(b[: len(b) // 2])
        return "truncated .npy"
    return cache_case(c, "cache_truncated_feature", corrupt)


@case("cache_wrong_shape_feature", "cache", "a cached .npy of the wrong shape: recomputed, predictions equal")
def _(c):
    def corrupt(files, np):
        a = np.load(files[0])
        np.save(files[0], np.zeros((len(a), 7) if a.ndim == 2 else 7, np.float32))
        return "wrong-shape .npy"
    return cache_case(c, "cache_wrong_shape_feature", corrupt)


@case("cache_stale_digest", "cache", "an image rewritten in place (same size and mtime): features recomputed")
def _(c):
    from PIL import Image
    d = c.d("cache_stale_digest")
    cache = d / "cache"
    data = img_folder(d / "data")
    a = Image.open(pick("ants", 1, skip=80)[0]).convert("RGB").resize((160, 160))
    b = Image.open(pick("bees", 1, skip=80)[0]).convert("RGB").resize((160, 160))
    target = data / "ants" / "swap.bmp"
    a.save(target)
    other = d / "other.bmp"
    b.save(other)
    assert target.stat().st_size == other.stat().st_size
    rA = c.fit(data, d / "runA", cache=cache)
    if rA.rc != 0:
        return V(SKIPPED, f"first fit failed: {rA.last_err}", rA)
    st = target.stat()
    target.write_bytes(other.read_bytes())
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    rB = c.fit(data, d / "runB", cache=cache)
    rC = c.fit(data, d / "runC", cache=d / "fresh_cache")
    probe = pick("ants", 2, split="val") + pick("bees", 2, split="val")

    def check(rB):
        if rC.rc != 0:
            return V(SKIPPED, "fresh-cache fit failed", rC)
        pb = probs(c.run("predict", d / "runB", *probe, "--json", cache=cache))
        pc = probs(c.run("predict", d / "runC", *probe, "--json", cache=d / "fresh_cache"))
        worst = max(abs(pb[k][l] - pc[k].get(l, 9)) for k in pc for l in pc[k])
        if worst > CACHE_TOL:
            return V(SILENT, f"stale features of the old image used (differs from a fresh cache by {worst:.4f})", rB)
        return V(HANDLED, "recomputed", rB)
    return must_succeed(rB, check)


@case("cache_clear_foreign_dir", "cache", "cache clear --cache-dir DIR on a user folder with features/ and snapshots/: must not delete")
def _(c):
    d = c.d("cache_clear_foreign_dir") / "mywork"
    (d / "features").mkdir(parents=True)
    (d / "snapshots").mkdir()
    (d / "digests").mkdir()
    (d / "features" / "thesis_features.csv").write_text("a,b\n1,2\n")
    (d / "snapshots" / "holiday.jpg").write_bytes(pick("ants", 1)[0].read_bytes())
    (d / "digests" / "notes.txt").write_text("important")
    (d / "README.md").write_text("mine")
    before = tree_digest(d)
    r = c.run("cache", "clear", "--cache-dir", d, "-y")
    gone = lost(before, tree_digest(d))
    if gone:
        return V(LOST, f"deleted the user's {', '.join(gone)}", r)
    v = crash_or_hang(r)
    if v:
        return v
    if r.rc == 0:
        if re.search(r"not a rehead cache|marker|refus", r.text, re.I):
            return V(HANDLED, "refused, exit 0", r)
        return V(SILENT, "printed success and deleted nothing", r)
    return clean_error(r, ("mywork", "cache"))


@case("cache_clear_readonly", "cache", "cache clear on a read-only cache: reports it could not delete, exit != 0")
def _(c):
    d = c.d("cache_clear_readonly") / "cache"
    fx_run(c)
    shutil.copytree(c.cache, d, dirs_exist_ok=True)
    n0 = len(_npys(d))
    if not c.mount(d, "ro"):
        return V(SKIPPED, "cannot make a read-only bind mount here")
    try:
        r = c.run("cache", "clear", "--cache-dir", d, "-y")
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)
        c.mounts.remove(d)
    v = crash_or_hang(r)
    if v:
        return v
    if r.rc == 0:
        return V(SILENT, f"exit 0 ({r.out.strip()[:80]}) and {n0} feature files still there", r)
    return clean_error(r, ("read-only", "could not", "permission", "cannot"))


@case("cache_clear_real", "cache", "control: cache clear on a real cache deletes its features")
def _(c):
    d = c.d("cache_clear_real") / "cache"
    fx_run(c)
    shutil.copytree(c.cache, d, dirs_exist_ok=True)
    r = c.run("cache", "clear", "--cache-dir", d, "-y")
    return must_succeed(r, lambda r: V(HANDLED, "cleared", r) if not _npys(d)
                        else V(SILENT, f"{len(_npys(d))} feature files left, exit 0", r))


@case("cache_dir_is_a_file", "cache", "--cache-dir pointing at a regular file: error naming it (file untouched)")
def _(c):
    p = c.d("cache_dir_is_a_file") / "notacache.txt"
    p.write_text("precious")
    r = c.fit(fx_imgs(c), c.d("cache_dir_is_a_file") / "run", "--cache-dir", p)
    if not p.is_file() or p.read_text() != "precious":
        return V(LOST, "the file was replaced", r)
    return ok_or_error(r, lambda r: V(HANDLED, "went on without the cache", r), "notacache.txt")


@case("cache_full_disk", "fault", "the cache on a full 1 MB tmpfs: fit still right (no cache) or a clear error")
def _(c):
    d = c.d("cache_full_disk") / "cache"
    if not c.mount(d, "tmpfs:1M"):
        return V(SKIPPED, "cannot mount a tmpfs here")
    out = c.d("cache_full_disk") / "run"
    r = c.fit(fx_imgs(c), out, cache=d)

    def check(r):
        return V(HANDLED, "fit went on", r) if n_used(out) == 16 else V(SILENT, f"{n_used(out)} used", r)
    return ok_or_error(r, check, ("space", "disk", "full"))


# -- run directories ----------------------------------------------------------------------------------
@case("out_full_disk", "fault", "--out on a full tmpfs: error naming the disk/file, no traceback")
def _(c):
    d = c.d("out_full_disk") / "disk"
    if not c.mount(d, "tmpfs:256K"):
        return V(SKIPPED, "cannot mount a tmpfs here")
    try:
        with open(d / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass
    r = c.fit(fx_imgs(c), d / "run")
    return expect_error(r, ("space", "disk", "full"))


@case("out_readonly_parent", "fault", "--out under a read-only folder: error naming it")
def _(c):
    d = c.d("out_readonly_parent") / "ro"
    d.mkdir(parents=True, exist_ok=True)
    if not c.mount(d, "ro"):
        return V(SKIPPED, "cannot make a read-only bind mount here")
    r = c.fit(fx_imgs(c), d / "run")
    return expect_error(r, ("read-only", "permission", "ro/run", "cannot", "writ"))


@case("out_is_a_file", "rundir", "--out pointing at a user's file: error, file untouched")
def _(c):
    p = c.d("out_is_a_file") / "report.docx"
    p.write_bytes(b"my thesis")
    r = c.fit(fx_imgs(c), p)
    if not p.is_file() or p.read_bytes() != b"my thesis":
        return V(LOST, "the user's file was replaced", r)
    return expect_error(r, "report.docx")


def user_folder(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "notes.txt").write_text("do not delete")
    (d / "photos").mkdir(exist_ok=True)
    shutil.copy(pick("bees", 1)[0], d / "photos" / "b.jpg")
    return d


def overwrite_user_folder(c, d) -> V:
    """`fit ... --out D --overwrite` onto a folder of the user's: refused, nothing deleted."""
    before = tree_digest(d)
    r = c.fit(fx_imgs(c), d, "--overwrite")
    gone = lost(before, tree_digest(d))
    if gone:
        return V(LOST, f"deleted {', '.join(gone)}", r)
    return expect_error(r, d.name, silent_detail="wrote a run into the user's folder (files kept)")


@case("out_user_folder_overwrite", "rundir", "--overwrite onto a user folder that is not a run: refuse, delete nothing")
def _(c):
    return overwrite_user_folder(c, user_folder(c.d("out_user_folder_overwrite") / "mystuff"))


@case("out_user_project_overwrite", "rundir", "--overwrite onto a user project holding its own config.yaml: refuse, delete nothing")
def _(c):
    d = user_folder(c.d("out_user_project_overwrite") / "project")
    (d / "config.yaml").write_text("lr: 1\n")  # the project's own settings, not a rehead run
    return overwrite_user_folder(c, d)


@case("out_user_folder", "rundir", "--out onto a non-empty user folder, no --overwrite: refuse")
def _(c):
    d = user_folder(c.d("out_user_folder") / "mystuff")
    before = tree_digest(d)
    r = c.fit(fx_imgs(c), d)
    gone = lost(before, tree_digest(d))
    if gone:
        return V(LOST, f"deleted {', '.join(gone)}", r)
    return expect_error(r, "mystuff", silent_detail="wrote a run into the user's folder")


@case("out_existing_run", "rundir", "--out onto an existing run, no --overwrite: refuse, run unchanged")
def _(c):
    run = copy_run(fx_run(c), c.d("out_existing_run") / "run")
    before = tree_digest(run)
    r = c.fit(fx_imgs(c), run, "--seed", "3")
    gone = lost(before, tree_digest(run))
    if gone:
        return V(LOST, f"changed {', '.join(gone)}", r)
    return expect_error(r, ("--overwrite", "exists"))


@case("out_existing_run_overwrite", "rundir", "control: --overwrite onto an existing run replaces it")
def _(c):
    run = copy_run(fx_run(c), c.d("out_existing_run_overwrite") / "run")
    (run / "stale_extra.txt").write_text("left by an older run")
    r = c.fit(fx_imgs(c), run, "--seed", "3", "--overwrite")
    return must_succeed(r, lambda r: V(HANDLED, "replaced", r) if (run / "summary.json").exists()
                        else V(SILENT, "no summary.json", r))


@case("concurrent_fits_same_out", "rundir", "two fits into one --out at once: one runs, the other stops with a clear message")
def _(c):
    out = c.d("concurrent_fits_same_out") / "run"
    p1 = c.popen(["fit", fx_imgs(c), "--strategy", "extract", "--quiet", "--out", out, "--seed", "1"])
    p2 = c.popen(["fit", fx_imgs(c), "--strategy", "extract", "--quiet", "--out", out, "--seed", "2"])
    r1, r2 = c.wait(p1, timeout=max(c.timeout, 240)), c.wait(p2, timeout=max(c.timeout, 240))
    for r in (r1, r2):
        v = crash_or_hang(r)
        if v:
            return v
    if r1.rc == 0 and r2.rc == 0:
        return V(LOST, "both 'succeeded' into the same directory (metrics/weights mixed)", r2)
    if r1.rc != 0 and r2.rc != 0:
        return V(UNEXPECTED, "both failed", r2)
    loser = r1 if r1.rc != 0 else r2
    return clean_error(loser, ("run", "use", "exists", "lock", "another"))


# -- ensembles and export ---------------------------------------------------------------------------------
def fx_ensemble(c):
    def build():
        out = c.root / "fx" / "ens"
        r = c.run("ensemble", fx_run(c), fx_run_seed1(c), "--out", out)
        if r.rc != 0:
            raise RuntimeError(f"ensemble failed: {r.last_err}")
        return out
    return c.fixture("ensemble", build)


@case("export_ensemble", "export", "export of an ensemble: a clear error (one model wanted) or a working file")
def _(c):
    try:
        ens = fx_ensemble(c)
    except FixtureFailed as e:
        return V(SKIPPED, str(e))
    r = c.run("export", ens, "--format", "torchscript")

    def check(r):
        made = [p for p in ens.rglob("*") if p.suffix in (".pt", ".ts", ".onnx", ".torchscript")]
        return V(HANDLED, f"wrote {made[0].name}", r) if made else V(SILENT, "exit 0, no exported file", r)
    return ok_or_error(r, check, ("ensemble", "soup", "member", "one model"))


@case("export_bad_format", "export", "export --format bogus: error naming it")
def _(c):
    return expect_error(c.run("export", fx_run(c), "--format", "bogus"), "bogus")


@case("ensemble_mixed_modalities", "export", "ensemble of an image run and a text run: error")
def _(c):
    r = c.run("ensemble", fx_run(c), fx_text_run(c), "--out", c.d("ensemble_mixed_modalities") / "ens")
    return expect_error(r, ("modalit", "image", "text", "classes"))


@case("ensemble_evaluate", "export", "evaluate an ensemble on its members' own images: scores all 16 and says "
                                    "all 16 were seen (else a score on training data reads as held out)")
def _(c):
    try:
        ens = fx_ensemble(c)
    except FixtureFailed as e:
        return V(SKIPPED, str(e))
    r = c.run("evaluate", ens, fx_imgs(c), "--json")

    def check(r):
        n, seen = r.json().get("n"), sum((r.json().get("seen") or {}).values())
        return V(HANDLED, "16, 16 seen", r) if (n, seen) == (16, 16) else V(SILENT, f"n={n}, seen={seen}", r)
    return must_succeed(r, check)


@case("tab_soup_other_seeds", "export", "soup of two random table encoders drawn with other seeds: refused")
def _(c):
    other = c.fixture("table_run_s1", lambda: _fit_fixture(c, "table_run_s1", fx_table(c), "--model",
                                                           "tabular:mlp-20-16x1", "--id-columns", "patient",
                                                           "--seed", "1"))
    r = c.run("ensemble", fx_table_run(c), other, "--soup", "--out", c.d("tab_soup_other_seeds") / "soup")
    return expect_error(r, "same weights")


@case("ensemble_out_user_folder", "export", "ensemble --out onto a user folder: refuse, delete nothing")
def _(c):
    d = user_folder(c.d("ensemble_out_user_folder") / "mystuff")
    before = tree_digest(d)
    r = c.run("ensemble", fx_run(c), fx_run_seed1(c), "--out", d)
    gone = lost(before, tree_digest(d))
    if gone:
        return V(LOST, f"deleted {', '.join(gone)}", r)
    return expect_error(r, "mystuff", silent_detail="wrote an ensemble into the user's folder")


# ------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------
def run_case(c: Ctx, name, kind, expected, fn) -> dict:
    t0 = time.time()
    try:
        v = fn(c)
    except FixtureFailed as e:
        v = V(SKIPPED, str(e))
    except Exception as e:  # noqa: BLE001
        import traceback
        tb = traceback.format_exc().strip().splitlines()
        v = V(HARNESS, f"{type(e).__name__}: {e} [{tb[-3].strip() if len(tb) > 2 else ''}]")
    r = v.r
    return {"name": name, "kind": kind, "expected": expected, "outcome": v.outcome, "detail": v.detail[:300],
            "exit_code": (None if r is None else ("timeout" if r.timed_out else r.rc)),
            "stderr_last": "" if r is None else r.last_err, "seconds": round(time.time() - t0, 1)}


def git_head(src):
    try:
        h = subprocess.run(["git", "-C", str(src or REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src or REPO), "status", "--porcelain", "rehead"], capture_output=True,
                               text=True).stdout.strip()
        return h + ("+dirty" if dirty else "")
    except OSError:
        return "?"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", help="case name or fnmatch pattern (repeatable); JSON not written")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per CLI call (a timeout is a hang)")
    ap.add_argument("--jobs", type=int, default=1, help="cases at once (the machine is shared: default 1)")
    ap.add_argument("--src", help="a rehead checkout to test instead of the installed one (PYTHONPATH)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "hostile.json"))
    a = ap.parse_args(argv)

    sel = CASES
    if a.only:
        sel = [x for x in CASES if any(fnmatch.fnmatch(x[0], pat) for pat in a.only)]
        if not sel:
            sys.exit(f"no case matches {a.only}; see --list")
    if a.list:
        for name, kind, expected, _ in sel:
            print(f"{name:34} {kind:9} {expected}")
        print(f"{len(sel)} cases")
        return

    src = str(Path(a.src).resolve()) if a.src else None
    pre = subprocess.run([sys.executable, "-c", "import rehead.cli"], capture_output=True, text=True,
                         env={**os.environ, **({"PYTHONPATH": src} if src else {})})
    if pre.returncode != 0:
        sys.exit("rehead does not import (someone mid-edit?); not running:\n" + pre.stderr[-1500:])

    # A shell starts `cmd &` with SIGINT ignored, and an ignored signal stays ignored across
    # exec: every rehead started from here would then shrug off the Ctrl-C case's SIGINT.
    # A handler (unlike SIG_IGN) is reset to the default on exec.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    root = Path(tempfile.mkdtemp(prefix="rehead-hostile-"))

    def on_term(signum, frame):  # so that `finally` unmounts, kills and cleans up
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    c = Ctx(root, src, a.timeout)
    load0, t0 = os.getloadavg(), time.time()
    rows = []
    print(f"{len(sel)} cases, temp dir {root}, load {load0[0]:.1f}", flush=True)
    try:
        if a.jobs > 1:
            from concurrent.futures import ThreadPoolExecutor
            ex = ThreadPoolExecutor(a.jobs)
            try:
                futs = [ex.submit(run_case, c, *x) for x in sel]
                for f in futs:
                    rows.append(f.result())
                    _print_row(rows[-1])
            finally:
                ex.shutdown(wait=False, cancel_futures=True)   # on Ctrl-C/SIGTERM: start nothing more
        else:
            for x in sel:
                rows.append(run_case(c, *x))
                _print_row(rows[-1])
    finally:
        for p in c.procs:
            if p.poll() is None:
                kill_group(p)
        c.umount_all()
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    wall = time.time() - t0
    counts = {"cases": len(rows)}
    for o in OUTCOMES:
        counts[COUNT_KEYS[o]] = sum(r["outcome"] == o for r in rows)
    print()
    print(f"{'case':34} {'outcome':16} {'exit':>7}  detail / last stderr line")
    for r in rows:
        if r["outcome"] != HANDLED:
            print(f"{r['name']:34} {r['outcome']:16} {str(r['exit_code']):>7}  {r['detail'][:70]} | {r['stderr_last'][:70]}")
    print(json.dumps(counts))
    print(f"wall {wall:.0f} s, load {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    if a.only:
        print("(--only: results not written)")
        return
    res = {"what": "rehead CLI under hostile inputs and faults (issue 12)", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ",
           time.gmtime()), "code": git_head(src), "src": src or str(REPO), "python": sys.version.split()[0],
           "timeout_s": a.timeout, "jobs": a.jobs, "wall_seconds": round(wall, 1),
           "loadavg_start": [round(x, 2) for x in load0], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
           "counts": counts, "cases": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {a.out}")


def _print_row(r):
    mark = "ok " if r["outcome"] == HANDLED else "!! "
    print(f"{mark}{r['name']:34} {r['outcome']:16} exit {str(r['exit_code']):>7} {r['seconds']:6.1f}s  {r['detail'][:80]}",
          flush=True)


if __name__ == "__main__":
    main()
