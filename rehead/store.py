"""ShardStore: features of many samples per file, indexed in one SQLite database.

Layout of a cache root::

    CACHEDIR.TAG                      marker: written when rehead creates the root; `clear` needs it
    index.sqlite                      models; shards with their rows' keys and checksums; file digests
    features/<model key>/<id>.npy     shards: float32 (rows, dim), written to a temp file and renamed
    snapshots/...                     backbone snapshots (rehead.features)

A shard is written whole and renamed before its rows enter the index, so a killed process
leaves finished shards usable (resume) and at worst an orphan file that `gc` removes. Each
process writes its own shards (unique names); SQLite in WAL mode serialises the index, so two
processes may append at once; where two shards hold a sample, the newer wins. A row is checked
(finite values, and a checksum of its bytes mixed with its sample key, so another sample's values
fail too) the first time it is read at a shard's stat (inode, size, mtime, ctime); the rows that
passed are marked in the index with that stat, and later reads of an unchanged shard check only
its header (shape, dtype). Any write to a shard moves its ctime, so it is checked again; a bad row
is a miss and gets recomputed. Stats younger than RACY_SECONDS are never marked: a file changed
twice within one tick of the file system's clock keeps its stat (git's "racy clean" problem).
"""
from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import time
import uuid
from pathlib import Path

import numpy as np

from .rundir import atomic_write_bytes  # noqa: F401  (one atomic writer for the cache and run directories)
from .shards import (ShardIndex, finite_rows, in_read_order, key_ids, read_rows, row_checks,  # noqa: F401
                     save_shard, stamp_of)

MARKER = "CACHEDIR.TAG"
# The Cache Directory Tagging spec's signature (https://bford.info/cachedir/): backup tools skip it too.
MARKER_TEXT = ("Signature: 8a477f597d28d172789f06886806bc55\n"
               "# This directory is rehead's feature cache; `rehead cache clear` deletes it.\n")
# What rehead keeps in a cache root (demo/: `rehead demo`'s images, written before its first fit).
OWN_NAMES = {MARKER, "index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "features", "digests", "snapshots",
             "packaged",  # packaged:mpnet assembled from its pip parts: rebuilt on next use
             "datasets",  # torch Datasets given to rehead.fit, written once as PNG folders
             "demo"}
DB_TIMEOUT = 60.0  # seconds a process waits for another's write to the index
SHARD_ROWS = 2048  # rows per shard: a killed extraction loses at most this many samples' work
SHARD_SECONDS = 60.0  # ... or this much time, whichever comes first
REMEDY = "pass --no-cache, or --cache-dir DIR on a writable disk with free space"
ELSEWHERE = "pass --no-cache or another --cache-dir"  # where an unusable index leaves a fit

SCHEMA_VERSION = 2  # PRAGMA user_version of the index; bump when SCHEMA changes
ADDED_TABLES_FROM = 1  # versions from this one on only lack tables: they are added, nothing is dropped
RACY_SECONDS = 2.0  # a stat younger than this is not remembered (coarse file-system clocks)
STAT_REUSE_SECONDS = 60.0  # how long file_digests may use the stats the readability check just took
SCHEMA = """
CREATE TABLE IF NOT EXISTS models(mkey TEXT PRIMARY KEY, dim INTEGER NOT NULL, last_used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS shards(id INTEGER PRIMARY KEY, mkey TEXT NOT NULL, file TEXT NOT NULL UNIQUE,
                                  rows INTEGER NOT NULL, bytes INTEGER NOT NULL, created REAL NOT NULL,
                                  keys BLOB NOT NULL, checks BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS shards_mkey ON shards(mkey);
CREATE TABLE IF NOT EXISTS file_digests(path TEXT PRIMARY KEY, ino INTEGER, size INTEGER, mtime_ns INTEGER,
                                        ctime_ns INTEGER, sha256 BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shard_marks(file TEXT PRIMARY KEY, ino INTEGER, size INTEGER, mtime_ns INTEGER,
                                       ctime_ns INTEGER, good BLOB NOT NULL, k1 BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS model_names(mkey TEXT PRIMARY KEY, name TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS file_checks(path TEXT PRIMARY KEY, ino INTEGER, size INTEGER, mtime_ns INTEGER,
                                       ctime_ns INTEGER, checker TEXT NOT NULL) WITHOUT ROWID;
"""
NAMES_TABLE = next(t for t in SCHEMA.split(";") if "model_names" in t).strip()
# model_names: what each model key is (spec, cut, stage, precision), for `rehead cache info`; written
#   with a key's next shard or read (a key cached before the table existed is named when next used).
# shard_marks: per shard ("<model key>/<file>"), the stat at which rows were checked; good[r] = 1 for a
#   row that passed, k1[r] the half of its sample's key id mixed into the checksum (uint64).
# file_checks: files judged readable (rehead.data.images) at that stat by that checker.


class CacheError(ValueError):
    """The cache cannot be used as asked (read-only, full, corrupt index, not a rehead cache).
    The message is one line naming the path and the remedy."""


def default_cache_dir() -> Path:
    env = os.environ.get("REHEAD_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rehead"


def parse_size(text: str) -> int:
    """'500MB', '2G', '1.5GiB', '1000' -> bytes (decimal units; KiB/MiB/GiB binary)."""
    s = text.strip().upper().replace(" ", "")
    units = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40,
             "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "K": 10**3, "M": 10**6, "G": 10**9,
             "T": 10**12, "B": 1}
    for u, mult in units.items():
        if s.endswith(u):
            s, m = s[: -len(u)], mult
            break
    else:
        m = 1
    try:
        n = float(s)
    except ValueError:
        raise ValueError(f"cannot read size {text!r}: write e.g. 500MB, 2GB or 1.5GiB") from None
    if n < 0:
        raise ValueError(f"size {text!r} is negative")
    return int(n * m)


def _absolute(p: str) -> str:
    """os.path.abspath, skipped for a path that is already absolute and normal (the usual item)."""
    if os.sep == "/" and p[:1] == "/" and "/." not in p and "//" not in p and p[-1:] != "/":
        return p
    return os.path.abspath(p)


class ShardStore:
    """The index and the shards under ``root``. Opens nothing until used; creates nothing on reads."""
    shard_rows = SHARD_ROWS
    shard_seconds = SHARD_SECONDS
    absolute = staticmethod(_absolute)  # the form of a path under which its digest and verdict are kept
    remedy, elsewhere = REMEDY, ELSEWHERE  # what errors suggest: a command without --no-cache sets its own

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_cache_dir()
        self._db: sqlite3.Connection | None = None
        self._pid = None
        self._memo: dict[str, tuple] = {}  # path -> (ino, size, mtime_ns, ctime_ns, digest)
        self._memo_dirs: set[str] = set()  # folders and containers whose digests are loaded
        self._pending: list[tuple] = []  # digests to write at the next flush
        self._checks: dict[str, tuple] = {}  # path -> (ino, size, mtime_ns, ctime_ns, checker): judged readable
        self._checks_dirs: set[str] = set()
        self._pending_checks: list[tuple] = []
        self._seen: dict[str, tuple] = {}  # path -> stat the readability check took, at _seen_at
        self._seen_at = -float("inf")
        self._rooted = False
        self.names: dict[str, str] = {}  # model key -> what it is (FeatureCache.name), for model_names

    # -- the root and its marker ------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.root / "index.sqlite"

    def is_marked(self) -> bool:
        """rehead's own marker: CACHEDIR.TAG is a shared convention, another tool's folder carries one too."""
        try:
            return "rehead" in (self.root / MARKER).read_text(errors="replace")
        except OSError:
            return False

    def _ensure_root(self) -> None:
        """Create the root with its marker, or adopt an empty directory or an old-layout rehead cache;
        refuse a directory holding anything else (its files are not ours to mix with or clear)."""
        if self.is_marked():
            return
        with self._writing(self.root):
            # Another process may be creating the root now: its marker mid-write (a .tmp- file) is not
            # "anything else", and once renamed it comes before any other file of ours (so look again).
            if self.root.exists() and _entries(self.root) and not _looks_like_old_cache(self.root) \
                    and not self.is_marked():
                raise CacheError(f"{self.root} is not empty and not a rehead cache (no {MARKER}): "
                                 "pick a new or empty --cache-dir")
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.root / MARKER, MARKER_TEXT.encode())

    def is_empty(self) -> bool:
        return not self.root.exists() or next(self.root.iterdir(), None) is None

    def _writing(self, path):
        return _Guard(path, remedy=self.remedy, elsewhere=self.elsewhere)

    def read_only(self) -> bool:
        """Whether the root cannot take writes: a read-only mount, or a folder this user may not write
        (a team's shared cache). Its index is then opened read-only; reads work, writes are refused."""
        try:
            return bool(os.statvfs(self.root).f_flag & os.ST_RDONLY) or not os.access(self.root, os.W_OK)
        except OSError:  # absent: created on the first write
            return False

    # -- the database ---------------------------------------------------------------------
    def _conn(self, create: bool) -> sqlite3.Connection | None:
        """The connection (one per process: forked loader workers never reuse the parent's)."""
        if create and not self._rooted:  # every writer checks the marker once
            self._ensure_root()
            self._rooted = True
        if self._db is not None and self._pid == os.getpid():
            return self._db
        if not create and not self.db_path.exists():
            return None
        if self.db_path.exists() and self.read_only():
            db = self._open_read_only()
        else:
            db = self._open()
        self._db, self._pid = db, os.getpid()
        return db

    def _open(self) -> sqlite3.Connection:
        with self._writing(self.db_path):
            db = sqlite3.connect(str(self.db_path), timeout=DB_TIMEOUT, isolation_level=None, check_same_thread=False)
            _set_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash loses at most the last commits
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                self._migrate(db)
            else:  # a table added within version 2 (an older rehead reads past it): no bump, the index stays shared
                try:
                    db.execute(NAMES_TABLE)
                except sqlite3.OperationalError:  # a read-only index: nothing will be named in it
                    pass
        return db

    def _open_read_only(self) -> sqlite3.Connection:
        """The index of a read-only root: WAL needs its -shm file, which a clean close removed and
        nobody may create here, so where plain read-only fails it is read as immutable."""
        uri = self.db_path.absolute().as_uri()
        with self._reading():
            for i, mode in enumerate(("?mode=ro", "?mode=ro&immutable=1")):
                try:
                    db = sqlite3.connect(uri + mode, uri=True, timeout=DB_TIMEOUT, isolation_level=None,
                                         check_same_thread=False)
                    v = db.execute("PRAGMA user_version").fetchone()[0]
                    break
                except sqlite3.OperationalError:
                    if i:
                        raise
            if v != SCHEMA_VERSION:
                raise CacheError(f"feature cache index {self.db_path} has another layout (version {v}) and its "
                                 f"folder is read-only: use it with the rehead that wrote it, or {self.elsewhere}")
        return db

    def _migrate(self, db) -> None:
        """Create the tables, or replace an older layout's (its rows are recomputed as needed; `gc`
        removes the shards nothing points to). An index from a newer rehead is left alone."""
        db.execute("BEGIN IMMEDIATE")
        try:
            v = db.execute("PRAGMA user_version").fetchone()[0]  # again, under the lock: another process may have
            if v > SCHEMA_VERSION:
                raise CacheError(f"feature cache index {self.db_path} was written by a newer rehead: upgrade, or "
                                 f"{self.elsewhere}")
            if v < SCHEMA_VERSION:
                if v < ADDED_TABLES_FROM:
                    for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
                        db.execute(f'DROP TABLE "{t}"')
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _write(self, sql_batches: list[tuple[str, list]]) -> None:
        """Run ``(sql, rows)`` pairs in one immediate transaction (none without rows: a read-only
        cache is only refused for a write it needs)."""
        if not any(rows for _, rows in sql_batches):
            return
        db = self._conn(create=True)
        with self._writing(self.db_path):
            db.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in sql_batches:
                    db.executemany(sql, rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def check_writable(self) -> None:
        """Raise CacheError now if the cache cannot take writes (read-only, not a rehead cache,
        unusable index), so that a fit can stop before it creates its run directory."""
        if self.read_only():
            raise CacheError(f"the feature cache at {self.root} is read-only: {self.remedy}")
        db = self._conn(create=True)
        with self._writing(self.db_path):
            db.execute("BEGIN IMMEDIATE")
            try:  # a write that is rolled back: fails on a read-only index
                db.execute("INSERT OR REPLACE INTO models VALUES ('.probe', 0, 0)")
            finally:
                db.execute("ROLLBACK")
        probe = self.root / "features" / f".tmp-probe-{os.getpid()}"
        with self._writing(probe):
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()

    def close(self) -> None:
        if self._db is not None and self._pid == os.getpid():
            self.flush()
            self._db.close()
        self._db = None

    # -- file digests: remembered by path + inode + size + mtime + ctime ----------------------------
    def file_digest(self, path: str) -> str:
        """sha256 of a file's bytes, remembered in the index; a rewrite, a replacement by another file
        (inode) or a metadata change (ctime, which nobody can set back) all rehash it."""
        ap = _absolute(path)
        return self._digest(ap, stamp_of(os.stat(ap)))

    def file_digests(self, paths: list[str]) -> list[str]:
        """``file_digest`` of many files: one stat each (the only way to see a change; none where
        the data check has just taken it), and one query per folder for its remembered digests;
        only new or changed files are read."""
        memo, stat, out = self._memo, os.stat, []
        # The stats the data check took a moment ago in this process (a fit checks its images, then
        # keys them): one stat per file per fit. Used for hits only; a miss is stat'ed and hashed now.
        seen = self._seen if time.monotonic() - self._seen_at < STAT_REUSE_SECONDS else {}
        seen_get, memo_get = seen.get, memo.get
        for ap in _all_absolute(paths):
            stamp = seen_get(ap)
            if stamp is None:
                stamp = stamp_of(stat(ap))
            known = memo_get(ap)
            if known is None and ap.rpartition(os.sep)[0] not in self._memo_dirs:
                self._load_memo(ap.rpartition(os.sep)[0])
                known = memo.get(ap)
            if known is not None and known[:4] == stamp:
                out.append(known[4])
            else:
                out.append(self._digest(ap, stamp_of(stat(ap))))
        return out

    def _digest(self, ap: str, stamp: tuple) -> str:
        d = ap.rpartition(os.sep)[0]  # dirname, without its checks: ap is absolute and normalised
        if d not in self._memo_dirs:
            self._load_memo(d)
        return self._remembered(ap, stamp, lambda: hashlib_sha256_file(ap))

    def content_digest(self, ref: str, prefix: str, stamp: tuple, compute) -> str:
        """A referenced sample's digest (a tar member, a table's cell), remembered like a file's but
        against its container's stamp: one range query per container (``prefix``, the reference up to
        its locator), and ``compute()`` (which hashes the bytes) only for a new or changed container."""
        if prefix not in self._memo_dirs:
            self._memo_dirs.add(prefix)
            self._memo.update((r[0], (*r[1:5], r[5].hex())) for r in self._prefix_rows(prefix))
        return self._remembered(ref, stamp, compute)

    def _remembered(self, key: str, stamp: tuple, compute) -> str:
        """The memo's digest of ``key`` (a path or a reference) at ``stamp``, else ``compute()``'s, kept."""
        known = self._memo.get(key)
        if known and known[:4] == stamp:
            return known[4]
        h = compute()
        if not racy(stamp):  # a change within the clock's tick would keep this stat: hash it again next time
            self._memo[key] = (*stamp, h)
            if _utf8(key):  # a name SQLite cannot store is hashed again next time
                self._pending.append((key, *stamp, bytes.fromhex(h)))
        if len(self._pending) >= 1000:
            self.flush()
        return h

    def _prefix_rows(self, prefix: str) -> list[tuple]:
        db = self._conn(create=False)
        if db is None:
            return []
        with self._reading():  # the keys between prefix and prefix with its last character bumped
            return db.execute("SELECT path, ino, size, mtime_ns, ctime_ns, sha256 FROM file_digests "
                              "WHERE path >= ? AND path < ?", (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))).fetchall()

    def _load_memo(self, d: str) -> None:
        """A folder's remembered digests in one range query on the path key: a warm fit makes one
        query per folder."""
        self._memo_dirs.add(d)
        rows = self._folder_rows("file_digests", "sha256", d)
        self._memo.update((r[0], (*r[1:5], r[5].hex())) for r in rows)

    def _folder_rows(self, table: str, column: str, d: str) -> list[tuple]:
        """(path, ino, size, mtime_ns, ctime_ns, column) of the files directly in folder ``d``."""
        db = self._conn(create=False)
        if db is None:
            return []
        prefix = d.rstrip(os.sep) + os.sep
        with self._reading():
            return db.execute(f"SELECT path, ino, size, mtime_ns, ctime_ns, {column} FROM {table} "
                              "WHERE path > ? AND path < ? AND instr(substr(path, ?), ?) = 0",
                              (prefix, prefix[:-1] + chr(ord(os.sep) + 1), len(prefix) + 1, os.sep)).fetchall()

    # -- readability verdicts (rehead.data.images), remembered like digests ------------------------
    def judged_readable(self, path: str, stamp: tuple, checker: str) -> bool:
        """True when ``path`` (absolute) was judged readable at exactly this stat by this checker."""
        self._seen[path] = stamp
        known = self._checks.get(path)
        if known is None:
            d = path.rpartition(os.sep)[0]
            if d in self._checks_dirs:
                return False
            self._checks_dirs.add(d)
            self._checks.update((r[0], r[1:]) for r in self._folder_rows("file_checks", "checker", d))
            known = self._checks.get(path)
        return known == (*stamp, checker)

    def start_checks(self) -> None:
        """A check of many files begins: the stats of an earlier one are not this one's."""
        self._seen, self._seen_at = {}, -float("inf")

    def remember_readable(self, path: str, stamp: tuple, checker: str) -> None:
        """Record a readable verdict (written at ``flush_checks``); a racy stat is not recorded."""
        if racy(stamp) or not _utf8(path):
            return
        self._checks[path] = (*stamp, checker)
        self._pending_checks.append((path, *stamp, checker))
        if len(self._pending_checks) >= 5000:  # a check killed midway keeps most of its work
            self.flush_checks()

    def flush_checks(self) -> None:
        """Write the verdicts; a cache that cannot take writes only loses the memo (checked again).
        Called when a check of many files ends: the stats it took count as fresh from now."""
        self._seen_at = time.monotonic()
        if self._pending_checks:
            rows, self._pending_checks = self._pending_checks, []
            try:
                self._write([("INSERT OR REPLACE INTO file_checks VALUES (?,?,?,?,?,?)", rows)])
            except CacheError:
                pass

    def flush(self) -> None:
        """Write the digests computed since the last flush; a read-only cache only loses the memo
        (they are hashed again next time)."""
        if self._pending:
            rows, self._pending = self._pending, []
            try:
                self._write([("INSERT OR REPLACE INTO file_digests VALUES (?,?,?,?,?,?)", rows)])
            except CacheError:
                if not self.read_only():
                    raise

    def refuse_misses(self, missing: int, total: int, what: str = "") -> None:
        """A read-only cache serves what it holds; features it lacks would have to be written."""
        if missing and self.read_only():
            raise CacheError(f"the feature cache at {self.root} is read-only and lacks {missing} of the {total} "
                             f"{what + ' ' if what else ''}features needed: {self.remedy}")

    def _reading(self):
        return _Guard(self.db_path, reading=True, remedy=self.remedy, elsewhere=self.elsewhere)

    # -- rows ------------------------------------------------------------------------------
    def read(self, mkey: str, skeys: list[str]) -> tuple[np.ndarray | None, np.ndarray]:
        """``(rows, ok)``: ``rows[i]`` holds sample ``skeys[i]``'s features where ``ok[i]``; a row
        that is missing or fails a check (shape, dtype, finite, checksum) is not ok. ``rows`` is
        None when none is cached."""
        ok = np.zeros(len(skeys), dtype=bool)
        db = self._conn(create=False)
        if db is None or not skeys:
            return None, ok
        with self._reading():
            dim = db.execute("SELECT dim FROM models WHERE mkey=?", (mkey,)).fetchone()
            if dim is None:
                return None, ok
            index = ShardIndex(db.execute("SELECT id, file, keys, checks FROM shards WHERE mkey=? ORDER BY id",
                                      (mkey,)).fetchall())
            marks = self._marks(db, mkey)
        ids = key_ids(skeys)
        out = np.empty((len(skeys), dim[0]), dtype=np.float32)  # rows left unread are never ok
        shard, row, check, from_run = index.find(ids[:, 0])
        everything = np.arange(len(skeys))
        new_marks, found = self._serve(mkey, index, marks, ids, everything, shard, row, check, out, ok)
        if from_run and not ok.all():
            # The shortcut served a run that holds damaged rows: their recomputed copies, in newer
            # shards, are found by the join.
            again = everything[~ok]
            shard, row, check, _ = index.find(ids[again, 0], join=True)
            more, found_again = self._serve(mkey, index, marks, ids, again, shard, row, check, out, ok)
            new_marks, found = new_marks + more, found + found_again
        if not found:
            return None, ok
        if ok.any():
            self._touch(mkey, new_marks)
        return out, ok

    def _serve(self, mkey, index, marks, ids, sel, shard, row, check, out, ok) -> tuple[list, int]:
        """Read the rows found for requests ``sel`` (shard, row, check aligned with it) into
        ``out[sel]`` and set ``ok[sel]``: rows of a shard unchanged since they were checked are
        trusted, the others checked. Returns (new shard marks, rows found)."""
        hit = shard >= 0
        sel, shard, row, check = sel[hit], shard[hit], row[hit], check[hit]
        if not len(sel):
            return [], 0
        if not in_read_order(shard, row):
            order = np.lexsort((row, shard))
            sel, shard, row, check = sel[order], shard[order], row[order], check[order]
        sids = ids[sel]
        dim = out.shape[1]
        good = np.zeros(len(sel), dtype=bool)
        trusted = np.zeros(len(sel), dtype=bool)
        groups = np.split(np.arange(len(sel)), np.flatnonzero(np.diff(shard)) + 1)
        stamps = []
        for group in groups:
            file = f"{mkey}/{index.files[shard[group[0]]]}"
            good[group], stamp = read_rows(self.root / "features" / file, dim, row[group], sel[group], out)
            stamps.append(stamp)
            mark = marks.get(file)
            if good[group[0]] and mark is not None and mark[0] == stamp:  # unchanged since its rows were checked
                r = row[group]
                trusted[group] = mark[1][r].astype(bool) & (mark[2][r] == sids[group, 1])
        todo = np.flatnonzero(good & ~trusted)
        if len(todo):
            at = sel[todo]
            with np.errstate(all="ignore"):  # every row in order (the first read after a change): no copy
                rows = out if len(at) == len(out) and np.array_equal(at, np.arange(len(out))) else out[at]
                good[todo] = finite_rows(rows) & (row_checks(sids[todo], rows) == check[todo])
        ok[sel] = good
        return self._new_marks(mkey, index, marks, groups, stamps, shard, row, sids, good & ~trusted), len(sel)

    def _marks(self, db, mkey: str) -> dict[str, tuple]:
        """{"<mkey>/<file>": (stat, good, k1)} of a model key's shards, in one range query."""
        rows = db.execute("SELECT file, ino, size, mtime_ns, ctime_ns, good, k1 FROM shard_marks "
                          "WHERE file > ? AND file < ?", (mkey + "/", mkey + "0")).fetchall()
        return {f: ((i, s, m, c), np.frombuffer(g, np.uint8), np.frombuffer(k, "<u8"))
                for f, i, s, m, c, g, k in rows}

    @staticmethod
    def _new_marks(mkey, index, marks, groups, stamps, shard, row, ids, passed) -> list[tuple]:
        """Rows for shard_marks: per shard with rows that just passed their check, its mark with
        them added (a new mark when the shard's stat moved). Racy stats are not marked."""
        out = []
        for group, stamp in zip(groups, stamps):
            new = group[passed[group]]
            if not len(new) or stamp is None or racy(stamp):
                continue
            sid = shard[group[0]]
            file = f"{mkey}/{index.files[sid]}"
            n = index.rows[sid]
            old = marks.get(file)
            if old is not None and old[0] == stamp and len(old[1]) == n:
                good, k1 = old[1].copy(), old[2].copy()
            else:
                good, k1 = np.zeros(n, np.uint8), np.zeros(n, "<u8")
            good[row[new]], k1[row[new]] = 1, ids[new, 1]
            out.append((file, *stamp, good.tobytes(), k1.tobytes()))
        return out

    def _touch(self, mkey: str, marks: list[tuple] = ()) -> None:
        """Record the use for LRU eviction, and the rows just checked; a read-only cache still
        serves its reads (and checks them again next time)."""
        try:
            self._write([("UPDATE models SET last_used=? WHERE mkey=?", [(time.time(), mkey)]),
                         ("INSERT OR REPLACE INTO shard_marks VALUES (?,?,?,?,?,?,?)", marks),
                         ("INSERT OR IGNORE INTO model_names VALUES (?,?)",  # a key cached before names
                          [(mkey, self.names[mkey])] if mkey in self.names else [])])
        except CacheError:
            pass

    def get(self, mkey: str, skey: str) -> np.ndarray | None:
        rows, ok = self.read(mkey, [skey])
        return rows[0].copy() if ok[0] else None

    def get_all(self, mkey: str, skeys: list[str]) -> np.ndarray | None:
        """Every sample's features stacked, or None as soon as one is missing or bad."""
        rows, ok = self.read(mkey, skeys)
        return rows if rows is not None and ok.all() else None

    def put(self, mkey: str, skey: str, arr: np.ndarray) -> None:
        """One sample (a one-row shard): for a few samples; extraction writes through ``writer``."""
        self.put_many(mkey, [skey], np.asarray(arr)[None])

    def put_many(self, mkey: str, skeys: list[str], rows: np.ndarray) -> None:
        """Write ``rows`` (n, dim) as one shard, then index it with its keys and checksums in one
        insert. Non-finite rows are not cached."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        keep = finite_rows(rows)
        skeys, rows = [k for k, g in zip(skeys, keep) if g], rows[keep]
        if not len(skeys):
            return
        ids = key_ids(skeys)
        self._conn(create=True)
        name = f"{uuid.uuid4().hex}.npy"
        path = self.root / "features" / mkey / name
        with self._writing(path):
            save_shard(path, rows)
        now = time.time()
        try:
            named = [(mkey, self.names[mkey])] if mkey in self.names else []
            self._write([("INSERT INTO models VALUES (?,?,?) ON CONFLICT(mkey) DO UPDATE SET last_used=?",
                          [(mkey, rows.shape[1], now, now)]),
                         ("INSERT OR REPLACE INTO model_names VALUES (?,?)", named),
                         ("INSERT INTO shards(mkey, file, rows, bytes, created, keys, checks) VALUES (?,?,?,?,?,?,?)",
                          [(mkey, name, len(rows), path.stat().st_size, now, ids[:, 0].tobytes(),
                            row_checks(ids, rows).tobytes())])])
        except BaseException:
            path.unlink(missing_ok=True)  # never an orphan shard for an index write that failed
            raise

    def writer(self, mkey: str) -> "ShardWriter":
        return ShardWriter(self, mkey, self.shard_rows, self.shard_seconds)

    # -- housekeeping ------------------------------------------------------------------------
    def models(self) -> list[dict]:
        """Per model key: shards, samples (distinct keys) and bytes of the shard files that exist, the
        index rows whose file is gone ("missing"), last use."""
        db = self._conn(create=False)
        if db is None:
            return []
        out = []
        with self._reading():
            names = dict(db.execute("SELECT mkey, name FROM model_names").fetchall()) if db.execute(
                "SELECT 1 FROM sqlite_master WHERE name='model_names'").fetchone() else {}
            for mkey, dim, used in db.execute("SELECT mkey, dim, last_used FROM models ORDER BY last_used DESC").fetchall():
                rows = db.execute("SELECT id, file, keys, checks FROM shards WHERE mkey=?", (mkey,)).fetchall()
                sizes = [self._shard_size(mkey, r[1]) for r in rows]
                shards = [r for r, n in zip(rows, sizes) if n is not None]
                out.append({"key": mkey, "name": names.get(mkey), "dim": dim, "last_used": used, "shards": len(shards),
                            "bytes": sum(n for n in sizes if n is not None), "missing": len(rows) - len(shards),
                            "samples": ShardIndex(shards).distinct()})
        return out

    def _shard_size(self, mkey: str, file: str) -> int | None:
        """A shard file's size; None when it is gone (deleted by hand: its index rows are stale)."""
        try:
            return (self.root / "features" / mkey / file).stat().st_size
        except FileNotFoundError:
            return None

    def size(self) -> dict:
        ms = self.models()
        snaps = [p for p in (self.root / "snapshots").rglob("*") if p.is_file()] if self.root.exists() else []
        index = sum(p.stat().st_size for p in self.root.glob("index.sqlite*")) if self.root.exists() else 0
        return {"path": str(self.root), "models": len(ms), "shards": sum(m["shards"] for m in ms),
                "missing_shards": sum(m["missing"] for m in ms),
                "entries": sum(m["samples"] for m in ms), "bytes": sum(m["bytes"] for m in ms),
                "index_bytes": index, "snapshots": len(list((self.root / "snapshots").glob("*")))
                if (self.root / "snapshots").exists() else 0,
                "snapshot_bytes": sum(p.stat().st_size for p in snaps), "per_model": ms}

    def gc(self, max_bytes: int | None = None, orphan_age: float = 3600.0) -> dict:
        """Drop shards no entry points to (superseded rows, orphans of killed writers older than
        ``orphan_age`` seconds), then evict least-recently-used model keys until the shards fit
        in ``max_bytes``. Index rows of shard files deleted by hand are forgotten ("missing_shards")."""
        db = self._conn(create=False)
        if db is None:
            return {"evicted": [], "freed_bytes": 0, "forgotten_files": 0, "missing_shards": 0}
        freed, missing = self._drop_dead_shards(db, orphan_age)
        forgotten = self._drop_stale_memos(db)
        evicted = []
        ms = sorted(self.models(), key=lambda m: m["last_used"])
        total = sum(m["bytes"] for m in ms)
        while max_bytes is not None and ms and total > max_bytes:
            m = ms.pop(0)
            self.evict(m["key"])
            evicted.append(m["key"])
            total -= m["bytes"]
            freed += m["bytes"]
        return {"evicted": evicted, "freed_bytes": freed, "forgotten_files": forgotten, "missing_shards": missing}

    def _drop_stale_memos(self, db) -> int:
        """Forget the digests and readable verdicts of files that are gone or changed since (their
        rows would never match again). A stat per remembered file: gc's time, not a fit's."""
        from .data import refs
        stale = {}
        for table in ("file_digests", "file_checks"):
            with self._reading():
                rows = db.execute(f"SELECT path, ino, size, mtime_ns, ctime_ns FROM {table}").fetchall()
            gone = []
            for path, *stamp in rows:
                try:  # a reference's row holds its container's stamp
                    if stamp_of(os.stat(refs.container(path) if refs.is_ref(path) else path)) != tuple(stamp):
                        gone.append((path,))
                except (OSError, ValueError):
                    gone.append((path,))
            stale[table] = gone
        self._write([(f"DELETE FROM {table} WHERE path=?", gone) for table, gone in stale.items()])
        self._forget_loaded_memos()
        return len({p for gone in stale.values() for p in gone})

    def _forget_loaded_memos(self) -> None:
        self._memo.clear()
        self._memo_dirs.clear()
        self._checks.clear()
        self._checks_dirs.clear()

    def _drop_dead_shards(self, db, orphan_age: float) -> tuple[int, int]:
        """Forget the shards whose file is gone, delete those no entry points to, then orphan files;
        returns (bytes actually freed, shards forgotten as gone)."""
        with self._reading():
            shards = db.execute("SELECT id, mkey, file, keys, checks FROM shards ORDER BY id").fetchall()
        known = {(r[1], r[2]) for r in shards}
        sizes = {r[0]: self._shard_size(r[1], r[2]) for r in shards}
        gone = [r for r in shards if sizes[r[0]] is None]
        shards = [r for r in shards if sizes[r[0]] is not None]  # the rows they held fall back on older shards
        live = set()
        for mkey in {r[1] for r in shards}:
            live |= ShardIndex([(r[0], r[2], r[3], r[4]) for r in shards if r[1] == mkey]).live_shards()
        dead = [r for r in shards if r[0] not in live]
        self._forget_shards(gone + dead, emptied={r[1] for r in gone})
        for _, mkey, file, _, _ in dead:
            (self.root / "features" / mkey / file).unlink(missing_ok=True)
        return sum(sizes[r[0]] for r in dead) + self._drop_orphans(known, orphan_age), len(gone)

    def _forget_shards(self, shards: list[tuple], emptied: set[str]) -> None:
        """Delete shards' index rows; of the model keys in ``emptied``, those left without a shard."""
        keys = [(m,) for m in emptied]
        self._write([("DELETE FROM shards WHERE id=?", [(r[0],) for r in shards]),
                     ("DELETE FROM shard_marks WHERE file=?", [(f"{r[1]}/{r[2]}",) for r in shards]),
                     ("DELETE FROM models WHERE mkey=? AND mkey NOT IN (SELECT mkey FROM shards)", keys),
                     ("DELETE FROM model_names WHERE mkey=? AND mkey NOT IN (SELECT mkey FROM shards)", keys)])

    def _drop_orphans(self, known: set[tuple], orphan_age: float) -> int:
        """Delete files under features/ the index does not know, older than ``orphan_age``; their bytes."""
        freed, now = 0, time.time()
        for p in (self.root / "features").glob("*/*"):
            if (p.parent.name, p.name) in known or now - p.stat().st_mtime <= orphan_age:
                continue
            if p.is_dir():  # the old layout's one-.npy-per-sample folders
                n = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
                shutil.rmtree(p, ignore_errors=True)
                freed += 0 if p.exists() else n
            else:  # a shard whose writer died before indexing it
                n = p.stat().st_size
                with self._writing(p):
                    p.unlink(missing_ok=True)
                freed += n
        shutil.rmtree(self.root / "digests", ignore_errors=True)  # the old layout's digest memo
        return freed

    def evict(self, mkey: str) -> None:
        """Forget a model key: its index rows first (readers then miss), then its files."""
        self._write([("DELETE FROM shards WHERE mkey=?", [(mkey,)]), ("DELETE FROM models WHERE mkey=?", [(mkey,)]),
                     ("DELETE FROM model_names WHERE mkey=?", [(mkey,)]),
                     ("DELETE FROM shard_marks WHERE file > ? AND file < ?", [(mkey + "/", mkey + "0")])])
        shutil.rmtree(self.root / "features" / mkey, ignore_errors=True)

    def clear(self) -> list[str]:
        """Delete everything rehead keeps here (marker aside); returns the paths it could not delete.
        Refuses a directory without the marker: it may hold someone else's files."""
        if self.is_empty():
            return []
        if not self.is_marked():
            raise CacheError(f"{self.root} does not carry rehead's cache marker ({MARKER}): not deleting it; "
                             "delete it yourself if it really is a feature cache")
        if self._db is not None:
            self._db.close()
            self._db = None
        failed: list[str] = []
        for p in [self.root / n for n in sorted(OWN_NAMES - {MARKER})] + list(self.root.glob(".tmp-*")):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, onerror=lambda fn, path, exc: failed.append(str(path)))
            elif os.path.lexists(p):
                try:
                    p.unlink()
                except OSError:
                    failed.append(str(p))
        self._forget_loaded_memos()
        self._rooted = False
        return [f for f in failed if os.path.lexists(f)]


class ShardWriter:
    """Collects one model key's rows during an extraction; writes a shard every ``shard_rows`` rows or
    ``seconds``, and the rest on ``flush``."""

    def __init__(self, store: ShardStore, mkey: str, shard_rows: int, seconds: float):
        self.store, self.mkey, self.shard_rows, self.seconds = store, mkey, shard_rows, seconds
        self.keys: list[str] = []
        self.rows: list[np.ndarray] = []
        self.since = time.monotonic()

    def add(self, skey: str, row: np.ndarray) -> None:
        if not self.keys:
            self.since = time.monotonic()
        self.keys.append(skey)
        self.rows.append(row)
        if len(self.keys) >= self.shard_rows or time.monotonic() - self.since > self.seconds:
            self.flush()

    def flush(self) -> None:
        if self.keys:
            keys, rows = self.keys, np.stack(self.rows)
            self.keys, self.rows = [], []
            self.store.put_many(self.mkey, keys, rows)


class _Guard:
    """Turns the OS's and SQLite's write failures (read-only, full disk, corrupt index) into a
    CacheError naming the path and the remedy."""

    def __init__(self, path, reading: bool = False, remedy: str = REMEDY, elsewhere: str = ELSEWHERE):
        self.path, self.reading, self.remedy, self.elsewhere = path, reading, remedy, elsewhere

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, CacheError):
            return False
        if isinstance(exc, sqlite3.DatabaseError):
            msg = str(exc)
            if self.reading or not isinstance(exc, sqlite3.OperationalError) or "malformed" in msg:
                raise CacheError(f"feature cache index {self.path} is unreadable ({msg}): run `rehead cache "
                                 f"clear`, or {self.elsewhere}") from exc
            raise CacheError(f"cannot write the feature cache at {self.path} ({msg}): {self.remedy}") from exc
        if isinstance(exc, OSError):
            reason = {errno.ENOSPC: "disk full", errno.EROFS: "read-only file system",
                      errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                      errno.ENOENT: "no such directory",
                      errno.EDQUOT: "disk quota exceeded"}.get(exc.errno, exc.strerror or str(exc))
            raise CacheError(f"cannot write the feature cache at {self.path} ({reason}): {self.remedy}") from exc
        return False


def _set_wal(db: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode=WAL``, retried: on an index that another process is creating at the same
    moment (several processes of one launch), SQLite answers "database is locked" at once instead of
    waiting out the busy timeout."""
    deadline, delay = time.monotonic() + DB_TIMEOUT, 0.01
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(2 * delay, 0.5)


def _entries(root: Path) -> set[str]:
    """The names in ``root``, but atomic writes in flight (``rundir.temp_file_beside``'s .tmp- files)."""
    return {p.name for p in root.iterdir() if not p.name.startswith(".tmp-")}


def _looks_like_old_cache(root: Path) -> bool:
    """A cache written before the marker existed: only rehead's names, features/<24-hex key>/..."""
    if not _entries(root) <= OWN_NAMES:
        return False
    keys = [p.name for sub in ("features", "snapshots", "datasets") if (root / sub).is_dir()
            for p in (root / sub).iterdir()]
    # some evidence of ours, and nothing else: a folder holding only a datasets/ of the user's is no cache
    ours = (root / "index.sqlite").is_file() or bool(keys) or (root / "demo").is_dir()  # demo: written before a fit
    return ours and all(len(k) == 24 and all(c in "0123456789abcdef" for c in k) for k in keys)


def _all_absolute(paths: list[str]) -> list[str]:
    """``_absolute`` of each path; one scan of them all when every one is already absolute and normal."""
    joined = "\0".join(paths)
    if os.sep == "/" and joined[:1] == "/" and joined.count("\0/") == len(paths) - 1 and "/." not in joined \
            and "//" not in joined and "/\0" not in joined and joined[-1:] != "/":
        return paths
    return [_absolute(p) for p in paths]


def racy(stamp: tuple) -> bool:
    """A stat too young to remember: a write within the same tick of a coarse file-system clock
    would leave it as it is."""
    return max(stamp[2], stamp[3]) > (time.time() - RACY_SECONDS) * 1e9


def _utf8(text: str) -> bool:
    try:
        text.encode()
        return True
    except UnicodeEncodeError:  # undecodable bytes in a file name (surrogate escapes)
        return False


def hashlib_sha256_file(path: str) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
