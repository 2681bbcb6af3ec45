"""RunDir: the one writer of a run directory.

Every file a run leaves (config.yaml, labels.json, split.json, metrics.csv, checkpoint.pt,
best.safetensors, model.safetensors, summary.json, ...) is written here, atomically (a temporary
file renamed over the target), so a killed run never leaves a half-written file. A RunDir is
claimed with an OS lock held for the life of the process: a second fit into the same directory
stops with a clear message, and a killed run leaves no stale lock behind. --overwrite keeps the
run it replaces (moved into RUN/.replaced) until the new run finishes, so a stopped one loses nothing.

Readers (``read_yaml``, ``read_json``, ``load_tensors``, ``load_checkpoint``) turn every error
into one ``BadRun`` line that names the file and the remedy.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shlex
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

MARKER = ".rehead-run"  # written at claim: only a directory carrying it is ever deleted by --overwrite
UNSTARTED = (".lock", MARKER)  # all a claimed directory holds before its command writes anything
LR_FIND_FILES = ("lr_find.json", "lr_find.png")  # what an LR range test writes (lr-find, fit --find-lr)
REPLACED = ".replaced"  # inside a run: the run --overwrite replaced, kept until the new one finishes
REPLACING = ".replacing"  # the run being moved aside, renamed to REPLACED once all of it is in
LOCK_GRACE = 3.0  # seconds a busy lock is waited for: a stopped fit's data-loading workers (forked, so they
# share its lock) outlive it by a moment, and `--resume` right after a SIGTERM was refused as "busy"
FINISHED = ("summary.json", "adapt.json", "results.json")  # a command's last file: the new run is whole


class RunExists(FileExistsError):
    pass


class BadRun(ValueError):
    pass


class RunBusy(RuntimeError):
    pass


def _default_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (mkstemp's files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


NEW_FILE_MODE = _default_mode()


def temp_file_beside(path: Path) -> tuple[int, str]:
    """A temporary file in ``path``'s folder for an atomic write, with the permissions a plain
    write would give (a colleague or a web server can read a run as they could any file there)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    if hasattr(os, "fchmod"):
        os.fchmod(fd, NEW_FILE_MODE)
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_run_dir(path: Path) -> bool:
    return (Path(path) / MARKER).exists() or (Path(path) / "config.yaml").exists()


class RunDir:
    """A claimed run directory. ``writer=False`` (non-main DDP processes) makes every write a no-op."""

    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self._lock = None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- claiming ------------------------------------------------------------------
    @staticmethod
    def check_free(path, overwrite: bool = False, resumable: bool = False, inputs=()) -> bool:
        """Refuse an --out that ``create`` would refuse (a file; a non-empty folder without
        ``overwrite``; one rehead did not make; one holding any of ``inputs``, the paths the command
        reads), so a command can check before its work; True when ``create`` would replace an
        existing run. ``resumable``: the command has --resume."""
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise RunExists(f"{p} exists and is not a directory: choose another --out")
        if not (p.exists() and any(c.name not in UNSTARTED for c in p.iterdir())):
            return False  # nothing, or only the lock and marker an interrupted start left
        say_replaced(p, overwriting=overwrite)
        _check_inputs_outside(p, inputs)
        if not overwrite:
            raise RunExists(f"run directory {p} already exists and is not empty: pass --overwrite to replace it"
                            + (", --resume to continue it," if resumable and not (p / "summary.json").exists() else "")
                            + " or choose another --out")
        if not any((d / MARKER).exists() for d in (p, p / REPLACED, p / REPLACING)):  # a config.yaml alone may be
            # the user's own project file (a kill just after the old run was set aside left the marker with it)
            raise RunExists(f"{p} is not a directory rehead made (no {MARKER} marker): --overwrite only replaces "
                            "rehead's run directories, never a folder of yours; choose another --out (a run from "
                            "before rehead marked its directories: delete it yourself)")
        return True

    @classmethod
    def create(cls, path, overwrite: bool = False, writer: bool = True, resumable: bool = False,
               inputs=()) -> "RunDir":
        """Claim a new run directory; an existing non-empty one only with ``overwrite``, and only
        if rehead made it (never a folder of the user's, nor one holding ``inputs``: the data or
        model the command reads). ``resumable``: the command has --resume.

        --overwrite deletes nothing here: the old run moves into ``REPLACED`` inside the directory,
        and goes only when the new run finishes (``finish``, which ``kept_if_finished`` calls); a
        command stopped before it has anything to keep puts it back (``restore_replaced``). A
        directory that already holds ``REPLACED`` (an earlier --overwrite that never finished) keeps
        that, the run the user had before it; the unfinished run beside it is deleted, as asked."""
        rd = cls(path, writer)
        if not writer:
            return rd
        p = rd.path
        rd.made = missing_folders(p)  # what kept_if_finished removes if the command stops part way
        if cls.check_free(p, overwrite, resumable, inputs):
            rd._claim()  # a run still writing there keeps its lock: refuse before moving anything
            rd._set_aside_old()
        else:
            p.mkdir(parents=True, exist_ok=True)
            rd._claim()
        (p / MARKER).touch()
        return rd

    def _set_aside_old(self) -> None:
        """Move the run --overwrite replaces into REPLACED (renames: instant, nothing copied). It goes into
        REPLACING first, renamed REPLACED once all of it is in: a kill between two renames leaves REPLACING,
        which the next claim puts back (``_unsplit``), never half a run that a later --overwrite would
        take for the unfinished one and delete."""
        self._unsplit()
        stash = self.path / REPLACED
        old = [c for c in self.path.iterdir() if c.name not in (".lock", REPLACED)]
        if stash.exists() or all(c.name in UNSTARTED + LR_FIND_FILES for c in old):
            _delete(old)  # an unfinished run over a kept one; or only an LR finder's output, remade in seconds
            return
        part = self.path / REPLACING
        part.mkdir()
        try:
            for child in old:
                child.rename(part / child.name)
            part.rename(stash)
        except BaseException:  # a Ctrl-C between two renames: the old run goes back whole
            self._unsplit()
            raise

    def _unsplit(self) -> bool:
        """Put back what REPLACING holds: an --overwrite killed while it moved the old run aside (the rest
        of that run is still in place). Nothing is deleted. False when there is none."""
        part = self.path / REPLACING
        if not part.is_dir():
            return False
        for child in part.iterdir():
            child.rename(self.path / child.name)
        part.rmdir()
        return True

    def restore_replaced(self) -> bool:
        """Put back the run --overwrite replaced, deleting what this command wrote: it stopped before it had
        anything worth keeping. False when there is none (no --overwrite, or it replaced nothing)."""
        if not (self.writer and (self.path / REPLACED).is_dir()):
            return False
        from . import interrupts
        with interrupts.deferred():  # a second, impatient Ctrl-C must not leave the old run half put back
            _delete([c for c in self.path.iterdir() if c.name not in (".lock", REPLACED)])
            self._unstash()
        return True

    def _unstash(self) -> None:
        stash = self.path / REPLACED
        for child in stash.iterdir():
            child.rename(self.path / child.name)
        stash.rmdir()

    def finish(self) -> None:
        """The new run is whole: the run --overwrite replaced goes. Call it before ``release``: once the
        lock is free a second --overwrite may claim the directory and keep REPLACED as the user's run."""
        if self.writer:
            shutil.rmtree(self.path / REPLACED, ignore_errors=True)

    @classmethod
    def restore(cls, path) -> str:
        """`rehead restore RUN`: put back the run an --overwrite that never finished (killed) set aside in
        RUN/.replaced, deleting what the new run wrote; or, where the kill came while the old run was being
        moved aside, put its parts back together (deleting nothing). Refused while a process writes there.
        Returns what was done, in words."""
        p = Path(path)
        if not ((p / REPLACED).is_dir() or (p / REPLACING).is_dir()):
            raise BadRun(f"{p} holds no run set aside by --overwrite (no {p / REPLACED}): nothing to restore")
        rd = cls(p)
        rd._claim()  # refused while a command is writing there (an --overwrite still running)
        try:
            if rd._unsplit():
                if not (p / REPLACED).is_dir():
                    return f"{p} is the run an --overwrite was moving aside when it stopped, put back together"
            new = sorted(c.name for c in p.iterdir() if c.name not in UNSTARTED + (REPLACED,))
            rd.restore_replaced()
        finally:
            rd.release()
        return (f"{p} is the run --overwrite replaced, as it was"
                + (f"; the unfinished new run's files were deleted ({', '.join(new)})" if new else ""))

    @classmethod
    def open(cls, path, writer: bool = True) -> "RunDir":
        """Claim an existing run directory (resume, or a command adding files to it)."""
        rd = cls(path, writer)
        say_replaced(rd.path)
        if not rd.path.is_dir() or not is_run_dir(rd.path):
            raise BadRun(f"{rd.path} is not a rehead run directory (no config.yaml)")
        if writer:
            rd._claim()
        return rd

    def _claim(self) -> None:
        try:
            import fcntl
        except ImportError:  # no advisory locks (Windows): the directory check above still applies
            return
        import time
        f = open(self.path / ".lock", "a+")
        deadline = time.monotonic() + LOCK_GRACE
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                f.close()
                raise RunBusy(f"another rehead process is writing to {self.path}: wait for it to finish, "
                              "or choose another --out") from None
        self._lock = f

    @staticmethod
    def discard_unstarted(path) -> bool:
        """Remove a run directory an interrupted command left before it wrote anything to resume from
        (the lock, the marker, an LR finder's plot): it would block the same command's rerun."""
        p = Path(path)
        if not (p / MARKER).exists() or (p / "config.yaml").exists():
            return False
        if any(c.name not in UNSTARTED + LR_FIND_FILES + ("metrics.csv",) for c in p.iterdir()):
            return False
        rd = RunDir(p)
        try:
            rd._claim()  # another process starting there holds the lock: its directory stays
        except RunBusy:
            return False
        shutil.rmtree(p, ignore_errors=True)
        rd.release()
        return True

    @contextmanager
    def kept_if_finished(self):
        """Keep the directory only if the block finishes: a command without --resume that stops part
        way (Ctrl-C, SIGTERM, an error) leaves no half directory, which its rerun would refuse as existing.
        A directory the command made goes, with the (then empty) parent folders it made; one that was
        there before stays, emptied of what this command wrote: an empty folder of the user's is empty
        again, and a run --overwrite replaced is put back as it was. When the block finishes, that
        replaced run goes (``finish``); release the lock after the block, never inside it (a second
        --overwrite claiming before ``finish`` would keep that run as the user's, then see it deleted)."""
        try:
            yield self
        except BaseException:
            self._discard_unfinished()
            raise
        self.finish()

    def _discard_unfinished(self) -> None:
        if not self.writer or self._lock is None:
            return
        path, made = Path(os.path.abspath(self.path)), getattr(self, "made", [])
        if path in made:
            shutil.rmtree(path, ignore_errors=True)
            remove_empty(made[:made.index(path)])
        elif not self.restore_replaced():  # the old run's own .lock stays with it
            _delete([c for c in path.iterdir() if c.name != ".lock"])
            (path / ".lock").unlink(missing_ok=True)
        self.release()

    def discard(self) -> None:
        """Delete a run directory this process created and claimed, when what it holds is worth nothing
        (a fit refused on its data before training): a rerun then needs no --overwrite. A run --overwrite
        replaced comes back instead."""
        if self.writer and self._lock is not None and not self.restore_replaced():
            shutil.rmtree(self.path, ignore_errors=True)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- writing -----------------------------------------------------------------------
    def write_bytes(self, name: str, data: bytes) -> None:
        if self.writer:
            atomic_write_bytes(self.path / name, data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str, obj) -> None:
        self.write_text(name, json.dumps(obj, indent=1, default=str))

    def write_yaml(self, name: str, obj: dict) -> None:
        import yaml
        self.write_text(name, yaml.safe_dump(obj, sort_keys=False))

    def save_tensors(self, name: str, sd: dict) -> None:
        from safetensors.torch import save
        self.write_bytes(name, save({k: v.detach().cpu().contiguous() for k, v in sd.items()}))

    def save_checkpoint(self, state: dict) -> None:
        import torch
        buf = io.BytesIO()
        torch.save(state, buf)
        self.write_bytes("checkpoint.pt", buf.getvalue())

    def write_rows(self, name: str, rows: list[dict]) -> None:
        """A CSV of ``rows`` (the union of their keys as columns), replacing the file."""
        buf = io.StringIO()
        cols = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        self.write_text(name, buf.getvalue())

    def remove(self, *names: str) -> None:
        if self.writer:
            for n in names:
                (self.path / n).unlink(missing_ok=True)

    def subdir(self, name: str) -> "RunDir":
        """A member directory inside this run (an ensemble's members), written under this claim."""
        d = RunDir(self.path / name, self.writer)
        if self.writer:
            d.path.mkdir(parents=True, exist_ok=True)
        return d

    # -- reading -------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        return (self.path / name).exists()

    def read_yaml(self, name: str = "config.yaml") -> dict:
        return read_yaml(self.path / name)

    def read_json(self, name: str):
        return read_json(self.path / name)

    def load_tensors(self, name: str) -> dict:
        return load_tensors(self.path / name)

    def load_checkpoint(self) -> dict | None:
        p = self.path / "checkpoint.pt"
        if not p.exists():
            return None
        import torch
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, corrupt, or not ours
            _interrupted(e)
            raise BadRun(f"{p} is unreadable ({type(e).__name__}): delete it and rerun with --overwrite, "
                         "or resume from an earlier copy") from e


def read_yaml(path: Path) -> dict:
    import yaml
    path = Path(path)
    say_replaced(path.parent)
    if path.parent.is_file():  # `rehead evaluate DATA RUN`: the arguments swapped
        raise BadRun(f"{path.parent} is a file, not a rehead run directory: give the run directory first "
                     "(e.g. `rehead evaluate RUN DATA`, `rehead predict RUN FILES`)")
    try:
        obj = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadRun(f"{path.parent} is not a rehead run directory (no {path.name})") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise BadRun(f"{path} is unreadable ({_first_line(e)}): restore it or rerun into a new --out") from e
    if not isinstance(obj, dict):
        raise BadRun(f"{path} is not a rehead config (expected a mapping): restore it or rerun into a new --out")
    return obj


def read_json(path: Path):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadRun(f"{path} is missing: the run is incomplete; rerun it with --overwrite") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BadRun(f"{path} is unreadable ({_first_line(e)}): restore it or rerun with --overwrite") from e


said_replaced: set[str] = set()  # the runs say_replaced spoke of: once each (the CLI clears it per command)


def say_replaced(path, overwriting: bool = False) -> None:
    """Say once, on stderr, that the run directory ``path`` holds a run an --overwrite set aside and never
    finished with (the process was killed, or the machine went down), and what the user can do. Nothing is
    said while a process holds the directory's lock: that is an --overwrite still running."""
    p = Path(path)
    try:
        left = (p / REPLACED).is_dir() or (p / REPLACING).is_dir()
    except OSError:
        return
    key = os.path.abspath(p)
    if not left or key in said_replaced or os.environ.get("RANK", "0") != "0":  # launched: the main process says it
        return
    held = _lock_held(p)
    if held:
        return
    said_replaced.add(key)
    print(replaced_note(p, overwriting, held is None), file=sys.stderr, flush=True)


def _lock_held(p: Path) -> bool | None:
    """Whether a process holds the run's lock (is writing it); None where that cannot be told."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        f = open(p / ".lock", "rb")  # a reader never creates the lock file
    except FileNotFoundError:
        return False
    except OSError:
        return None
    with f:  # closing drops the shared lock at once
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
    return False


def replaced_note(p: Path, overwriting: bool = False, unknown_lock: bool = False) -> str:
    """What ``say_replaced`` says of ``p``: where the old run is, whether anything is writing there, and the
    commands that keep the new run or put the old one back."""
    q = shlex.quote(str(p))
    free = ("rehead cannot tell whether a process is writing to it (no file locks here)" if unknown_lock else
            "no process is writing to it (its lock is free)")
    if (p / REPLACING).is_dir():
        return (f"note: {p} is split: an `--overwrite` was killed while it moved the run it replaces aside, part "
                f"of which is in {p / REPLACING}; {free}. `rehead restore {q}` puts it back together (it deletes "
                "nothing)" + ("; this --overwrite does that first." if overwriting else "."))
    head = (f"note: {p / REPLACED} holds the run an earlier `--overwrite` replaced: that --overwrite never finished "
            f"(it was killed, or the machine went down), and {free}. {p} holds the new run")
    if overwriting:
        return (head + f", unfinished: this --overwrite deletes it and keeps the old run in {p / REPLACED} until "
                f"this one finishes (then the old run goes; stopped before, it comes back). To keep the old run "
                f"instead, stop this command and run `rehead restore {q}`.")
    finished = (p / "config.yaml").exists() and not (p / "checkpoint.pt").exists() \
        and any((p / f).exists() for f in FINISHED)
    if finished:
        keep = (f", which finished: only the old run's deletion was left undone. Keep the new run: "
                f"`rehead fit --resume {q}` (it deletes the old one) or `rm -rf {shlex.quote(str(p / REPLACED))}`"
                if _resumable(p) else
                f", which finished: only the old run's deletion was left undone. Keep the new run: "
                f"`rm -rf {shlex.quote(str(p / REPLACED))}`")
    elif _resumable(p):
        keep = (f", unfinished. Finish it: `rehead fit --resume {q}` (then the old run is deleted)")
    else:
        keep = (", unfinished, and it cannot be resumed. Start it again: rerun the same command with --overwrite "
                f"(the old run stays in {p / REPLACED} until that one finishes)")
    return head + keep + (f". Get the old run back instead: `rehead restore {q}` (it deletes the new run's files "
                          "and puts the old run back as it was). Until then nothing is deleted.")


def _resumable(p: Path) -> bool:
    """A fit that `rehead fit --resume` can continue: its config.yaml and split.json are written."""
    import yaml
    try:
        cfg = yaml.safe_load((p / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(cfg, dict) and cfg.get("kind", "fit") == "fit" and "fit" in cfg and (p / "split.json").exists()


def _delete(paths) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def missing_folders(path) -> list[Path]:
    """The folders from ``path`` up that do not exist yet, outermost first: those mkdir(parents=True) makes."""
    missing, p = [], Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        missing.insert(0, p)
        p = p.parent
    return missing


def remove_empty(made: list[Path]) -> None:
    """Remove folders a stopped command made (outermost first in ``made``), innermost first, while empty:
    one holding another command's files stays, and so do the folders above it."""
    for folder in reversed(made):
        try:
            folder.rmdir()
        except OSError:
            break


def _check_inputs_outside(out: Path, inputs) -> None:
    """--overwrite empties --out: refused when it holds what the command reads (DATA inside the old
    run directory, --model naming the run being replaced, or a run that model was made from: each load
    of it rebuilds that one, and a run whose config.yaml named itself recursed on every load)."""
    from .zoo.runs import source_paths
    out = out.resolve()
    for given in inputs:
        if not isinstance(given, (str, Path)):
            continue
        path = str(given).split("{")[0] or "."  # a brace pattern of shards: the folder they are in
        if not os.path.exists(path):
            continue
        for i, q in enumerate(source_paths(path)):
            if q == out or out in q.parents:
                said = f"{q}, the run {given} is made from" if i else f"{given}"
                raise RunExists(f"{out} holds {said}, which this command reads: --overwrite would delete it "
                                "before it is read; choose another --out")


def load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file
    path = Path(path)
    if not path.exists():
        raise BadRun(f"{path} is missing: the run did not finish (continue it with "
                     f"`rehead fit --resume {path.parent}`)")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        _interrupted(e)
        raise BadRun(f"{path} is not a readable safetensors file ({_first_line(e)}): "
                     "restore it or rerun the run with --overwrite") from e


def _interrupted(e: Exception) -> None:
    """A Ctrl-C inside a native reader can surface as its own error (safetensors: a TypeError): say
    it was interrupted, never that a sound file is corrupt (with advice to --overwrite it)."""
    from . import interrupts
    if interrupts.arrived():
        raise KeyboardInterrupt from e


def _first_line(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__
