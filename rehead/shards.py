"""The shard files of the feature store and the checks on their rows.

A shard is one ``.npy`` file of float32 rows (rows, dim), written whole and renamed. Each row's
checksum mixes its bytes with its sample's key id, so a flipped byte, a NaN or another sample's
values all fail. ``ShardIndex`` maps key ids to (shard, row, check) from the index's blobs;
``read_rows`` copies rows out of one shard. ``rehead.store`` keeps the index database around them.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .rundir import temp_file_beside


def key_ids(skeys: list[str]) -> np.ndarray:
    """Per sample key, 16 bytes as two uint64 columns: [:, 0] finds a row, [:, 1] is mixed into its
    checksum, so even two keys sharing the first half never serve each other's values. A key that is
    a sha256 hex digest (images, text, tables) is used as is; any other is hashed."""
    if skeys and set(map(len, skeys)) == {64}:
        try:  # the usual case, in one decode of all keys: 50,000 in a few milliseconds
            whole = np.frombuffer(bytes.fromhex("".join(skeys)), dtype="<u8").reshape(-1, 4)
            return np.ascontiguousarray(whole[:, :2])
        except ValueError:
            pass

    def raw(k: str) -> bytes:
        if len(k) == 64:
            try:
                return bytes.fromhex(k[:32])
            except ValueError:
                pass
        return hashlib.sha256(k.encode()).digest()[:16]
    return np.frombuffer(b"".join(raw(k) for k in skeys), dtype="<u8").reshape(-1, 2)


def _weights(n: int) -> np.ndarray:
    """n odd uint64 weights (splitmix64 of the position): fixed forever, independent of numpy's RNG."""
    with np.errstate(over="ignore"):
        z = (np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) | np.uint64(1)


def row_checks(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Checksum per row: a position-weighted sum of its 8-byte words mod 2^64 (odd weights, so any
    change confined to one word always shows) plus half of its key id. One vectorised pass, a
    fraction of a crc32's time, so every read can afford it."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if rows.shape[1] % 2 == 0:
        words = rows.view(np.uint64)
    else:  # odd widths: 4-byte words, widened (a copy; uncommon)
        words = rows.view(np.uint32).astype(np.uint64)
    with np.errstate(over="ignore"):
        s = np.einsum("ij,j->i", words, _weights(words.shape[1])) + ids[:, 1]
    return s.view(np.int64)


def finite_rows(rows: np.ndarray) -> np.ndarray:
    """Rows whose values are all finite, in one pass: NaN and inf survive a sum (a float32 sum
    that overflows also counts as bad: such a row is recomputed, never stored)."""
    return np.isfinite(np.einsum("ij->i", rows))


def stamp_of(st: os.stat_result) -> tuple:
    """What says a file is unchanged: inode (replaced by another file), size, mtime, and ctime
    (moved by any write or metadata change, and nobody can set it back)."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def save_shard(path: Path, rows: np.ndarray) -> None:
    """np.save to a temp file in the shard's folder, fsync'd, then renamed: a reader sees a whole
    shard or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            np.lib.format.write_array(f, rows, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ShardIndex:
    """One model key's rows, from its shards' key and checksum blobs: key id -> (shard, row, check),
    the newest shard winning. Built with numpy in a few milliseconds for 50,000 rows, where a
    query returning one SQL row per sample takes ten times longer. A request for a run of rows in
    write order (a warm read of what one extraction wrote) is answered without the join."""

    def __init__(self, shards: list[tuple]):
        self.files = {sid: file for sid, file, _, _ in shards}
        keys = [np.frombuffer(k, dtype="<u8") for _, _, k, _ in shards]
        n = [len(k) for k in keys]
        self.rows = {sid: m for (sid, *_), m in zip(shards, n)}
        self.all_keys = np.concatenate(keys) if keys else np.zeros(0, dtype="<u8")
        self.all_shard = np.repeat(np.array([sid for sid, *_ in shards], dtype=np.int64), n)
        self.all_row = np.concatenate([np.arange(m) for m in n]) if n else np.zeros(0, dtype=np.int64)
        self.all_check = np.concatenate([np.frombuffer(c, dtype="<i8") for *_, c in shards]) if shards \
            else np.zeros(0, np.int64)
        self.keys = None

    def _join(self) -> None:
        """The key -> newest row lookup, built on first need."""
        if self.keys is not None:
            return
        # the last occurrence of a key (shards are in id order, so the newest) is the one that counts
        self.keys, first = np.unique(self.all_keys[::-1], return_index=True)
        last = len(self.all_keys) - 1 - first
        self.shard, self.row, self.check = self.all_shard[last], self.all_row[last], self.all_check[last]

    def find(self, ids: np.ndarray, join: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """Per id: shard (-1 when absent), row, check; and whether they came from a run (see
        ``_run``). ``join``: never from a run."""
        run = None if join else self._run(ids)
        if run is not None:
            return self.all_shard[run], self.all_row[run], self.all_check[run], True
        self._join()
        pos = np.minimum(np.searchsorted(self.keys, ids), max(len(self.keys) - 1, 0))
        hit = (self.keys[pos] == ids) if len(self.keys) else np.zeros(len(ids), dtype=bool)
        shard = np.where(hit, self.shard[pos] if len(self.keys) else -1, -1)
        return shard, (self.row[pos] if len(self.keys) else np.zeros(len(ids), np.int64)), \
            (self.check[pos] if len(self.keys) else np.zeros(len(ids), np.int64)), False

    def distinct(self) -> int:
        self._join()
        return len(self.keys)

    def _run(self, ids: np.ndarray) -> slice | None:
        """Where ``ids`` are a run of consecutive rows in write order (a warm read of what an
        extraction wrote: each split's keys, in order), that run. Rows are then served from the
        run itself: a key also written in a newer shard (recomputed after a failed check, or
        written by two processes) is served from the run's row, which is checked like any other;
        the store looks up the rows that fail with the join (``find(join=True)``)."""
        m = len(ids)
        if not m or m > len(self.all_keys):
            return None
        for p in np.flatnonzero(self.all_keys[:len(self.all_keys) - m + 1] == ids[0])[:4]:
            if np.array_equal(self.all_keys[p:p + m], ids):
                return slice(int(p), int(p) + m)
        return None

    def live_shards(self) -> set[int]:
        self._join()
        return set(np.unique(self.shard).tolist())


def in_read_order(shard: np.ndarray, row: np.ndarray) -> bool:
    """Whether (shard, row) pairs are already in read order (a warm read in write order is)."""
    return bool(np.all((shard[1:] > shard[:-1]) | ((shard[1:] == shard[:-1]) & (row[1:] > row[:-1]))))


def read_rows(path: Path, dim: int, rows: np.ndarray, dest: np.ndarray, out: np.ndarray) -> tuple[bool, tuple | None]:
    """Copy a shard's ``rows`` (ascending) into ``out[dest]``; ``(done, stat of the open file)``,
    done False when the shard is missing, torn or not a (n, dim) float32 array. Consecutive rows
    going to consecutive destinations (the usual warm read) are read straight into ``out``."""
    stamp = None
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            stamp = stamp_of(st)
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if fortran or dtype != np.float32 or len(shape) != 2 or shape[1] != dim:
                return False, stamp
            offset = f.tell()
            if st.st_size < offset + shape[0] * dim * 4 or rows[-1] >= shape[0]:
                return False, stamp
            if rows[-1] - rows[0] == len(rows) - 1 and dest[-1] - dest[0] == len(dest) - 1 \
                    and np.all(np.diff(dest) == 1):
                f.seek(offset + int(rows[0]) * dim * 4)
                view = out[dest[0]:dest[-1] + 1]
                return f.readinto(memoryview(view).cast("B")) == view.nbytes, stamp
        mm = np.memmap(path, dtype=np.float32, mode="r", offset=offset, shape=tuple(shape))
        out[dest] = mm[rows]
        return True, stamp
    except (OSError, ValueError, EOFError):
        return False, stamp
