"""Item references into containers: a sample of a WebDataset tar shard, a row of an Arrow file
(a Hugging Face ``save_to_disk`` folder) or of a Parquet file. A reference is a plain string,
so it travels through split.json, sets, sorting and DataLoader workers like a path does::

    tar:/abs/shards/train-000.tar::sample_17.jpg        a member of an uncompressed tar
    arrow:/abs/ds/train/data-00000-of-00001.arrow::image::17   row 17 of a column
    parquet:/abs/data/train.parquet::text::17                   row 17 of a column

Bytes are read only when asked for (in the DataLoader workers): each process opens its own
file handles (positional reads, so an inherited descriptor is never shared by offset), keeps
a tar shard's member index (one pass over its headers, no image decoding), maps Arrow files
into memory, and keeps the last few Parquet row groups it decoded.

The content key of a referenced image is the sha256 of its bytes: the same image as a file
and as a tar member or an Arrow cell has the same feature-cache key.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
from collections import OrderedDict

SCHEMES = ("tar", "arrow", "parquet")
_PREFIXES = tuple(f"{s}:{os.sep}" for s in SCHEMES)


class RefError(ValueError):
    """A reference that cannot be read: the message names it and why."""


def is_ref(item) -> bool:
    """Syntactically a reference (a scheme, an absolute container path, a locator)."""
    return isinstance(item, str) and item.startswith(_PREFIXES) and "::" in item


def make(scheme: str, container: str, *locator) -> str:
    return f"{scheme}:{container}::" + "::".join(str(x) for x in locator)


def parse(ref: str) -> tuple[str, str, tuple]:
    """(scheme, container path, locator): tar -> (member,); arrow/parquet -> (column, row)."""
    scheme, _, rest = ref.partition(":")
    if scheme == "tar":
        head, sep, member = rest.partition(".tar::")
        if not sep:
            raise RefError(f"{ref} is not a tar reference (tar:/path/shard.tar::member)")
        return scheme, head + ".tar", (member,)
    try:
        container, column, row = rest.rsplit("::", 2)
        return scheme, container, (column, int(row))
    except ValueError:
        raise RefError(f"{ref} is not a {scheme} reference ({scheme}:/path::column::row)") from None


def container(ref: str) -> str:
    return parse(ref)[1]


def display(ref: str) -> str:
    """A short name for messages and predictions: shard.tar::member, file.parquet::column::row."""
    scheme, path, loc = parse(ref)
    return f"{os.path.basename(path)}::" + "::".join(map(str, loc))


def stamp(path: str) -> tuple:
    """(ino, size, mtime_ns, ctime_ns): a changed container invalidates everything remembered of it."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


# -- per-process state ------------------------------------------------------------------------
class _State:
    """Handles and indexes of this process; a forked worker starts its own handles (but keeps
    the indexes the parent built: they are read-only)."""

    def __init__(self):
        self.pid = os.getpid()
        self.fds: OrderedDict[str, int] = OrderedDict()
        self.arrow: OrderedDict[str, object] = OrderedDict()
        self.parquet: OrderedDict[str, object] = OrderedDict()
        self.groups: OrderedDict[tuple, object] = OrderedDict()


_STATE = _State()
TAR_INDEX: dict[str, tuple[tuple, dict[str, tuple[int, int]]]] = {}  # shard -> (stamp, {member: (offset, size)})
_DIGESTS: dict[tuple, str] = {}  # (ref, container stamp) -> sha256 hex
MAX_FDS = 64
MAX_GROUPS = 4  # Parquet row groups kept decoded per process


def _state() -> _State:
    global _STATE
    if _STATE.pid != os.getpid():  # a forked worker: never use the parent's descriptors
        _STATE = _State()
    return _STATE


def _fd(path: str) -> int:
    st = _state()
    fd = st.fds.get(path)
    if fd is None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise RefError(f"cannot open {path}: {e.strerror}") from None
        st.fds[path] = fd
        while len(st.fds) > MAX_FDS:
            os.close(st.fds.popitem(last=False)[1])
    else:
        st.fds.move_to_end(path)
    return fd


# -- tar ----------------------------------------------------------------------------------------
def tar_index(path: str) -> dict[str, tuple[int, int]]:
    """{member name: (data offset, size)} of a shard's regular files, from one pass over its
    headers (data is skipped, never decoded); remembered while the shard is unchanged."""
    s = stamp(path)
    known = TAR_INDEX.get(path)
    if known and known[0] == s:
        return known[1]
    try:
        index = _ustar_index(path)
        if index is None:  # long names, pax or GNU extensions: the standard library's reader
            index = {}
            with tarfile.open(path, "r:") as tf:
                for ti in tf:
                    if ti.isfile():
                        index[ti.name] = (ti.offset_data, ti.size)  # a repeated name: the last one wins, as tar does
                _check_end(path, tf.offset)  # tarfile stops quietly at a cut or a damaged header
    except (tarfile.TarError, OSError) as e:
        if str(e) in _TARFILE_CUT:
            raise _cut_short(path) from None
        raise RefError(f"cannot read tar shard {path}: {e} (shards must be uncompressed .tar files)") from None
    TAR_INDEX[path] = (s, index)
    return index


_TARFILE_CUT = ("unexpected end of data", "truncated header", "empty header", "empty file")  # tarfile's words
_FILE_TYPES = (b"0", b"\0", b"7")
_EXTENDED = (b"L", b"K", b"x", b"g", b"X")


def _ustar_index(path: str) -> dict[str, tuple[int, int]] | None:
    """The member index of a plain ustar/v7 tar, reading only its 512-byte headers (about 20x
    faster than ``tarfile``'s Python-level header objects); None when a header needs more than
    that (pax, GNU long names, base-256 sizes), or does not check out, so ``tarfile`` decides."""
    index: dict[str, tuple[int, int]] = {}
    with open(path, "rb", buffering=0) as f:
        fd, off = f.fileno(), 0
        while True:
            h = os.pread(fd, 512, off)
            if len(h) < 512:  # the file ends before its end-of-archive blocks: a member is lost or cut
                raise _cut_short(path)
            if not any(h):
                break  # the end-of-archive blocks
            typ = h[156:157]
            if typ in _EXTENDED or h[124] & 0x80:
                return None
            try:
                check = int(h[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
                size = int(h[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            except ValueError:
                return None
            if check != sum(h[:148]) + 256 + sum(h[156:]):
                return None
            name = h[:100].split(b"\0", 1)[0]
            if h[257:262] == b"ustar":
                prefix = h[345:500].split(b"\0", 1)[0]
                if prefix:
                    name = prefix + b"/" + name
            if typ in _FILE_TYPES:
                index[name.decode("utf-8", "surrogateescape")] = (off + 512, size)
            off += 512 + (size + 511) // 512 * 512
    return index


def _cut_short(path: str) -> RefError:
    return RefError(f"{path} is cut short at byte {os.path.getsize(path)} (no end-of-archive): copy it again")


def _check_end(path: str, off: int) -> None:
    """A RefError unless the end-of-archive (a zero block) is at ``off``: a shard cut short by a
    copy would otherwise lose every sample after the cut without a word."""
    with open(path, "rb") as f:
        f.seek(off)
        block = f.read(512)
    if len(block) < 512:
        raise _cut_short(path)
    if any(block):
        raise RefError(f"{path} has a damaged tar header at byte {off}: copy it again")


def _tar_bytes(path: str, member: str) -> bytes:
    where = tar_index(path).get(member)
    if where is None:
        raise RefError(f"{path} has no member {member!r}")
    off, size = where
    data = os.pread(_fd(path), size, off)
    if len(data) != size:
        raise RefError(f"{path} is cut short: member {member!r} has {len(data)} of its {size} bytes")
    return data


# -- arrow / parquet ------------------------------------------------------------------------------
def _opened(cache, path: str, open_fn):
    """``open_fn(path)``, kept in a per-process LRU of at most MAX_FDS open files."""
    obj = cache.get(path)
    if obj is None:
        obj = cache[path] = open_fn(path)
        while len(cache) > MAX_FDS:
            cache.popitem(last=False)
    return obj


def arrow_table(path: str):
    """A Hugging Face Arrow file (IPC stream or file format), memory-mapped: nothing is read until used."""
    def open_arrow(p):
        import pyarrow as pa
        try:
            source = pa.memory_map(p, "r")
            try:
                return pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                return pa.ipc.open_file(source).read_all()
        except (OSError, pa.ArrowException) as e:
            raise RefError(f"cannot read Arrow file {p}: {e}") from None
    return _opened(_state().arrow, path, open_arrow)


def parquet_file(path: str):
    def open_parquet(p):
        import pyarrow.parquet as pq
        try:
            pf = pq.ParquetFile(p)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
            raise RefError(f"cannot read Parquet file {p}: {e}") from None
        pf._rehead_starts = _cumulative([pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        return pf
    return _opened(_state().parquet, path, open_parquet)


def _cumulative(ns: list[int]) -> list[int]:
    out, s = [], 0
    for n in ns:
        out.append(s)
        s += n
    return out


def _arrow_value(path: str, column: str, row: int):
    t = arrow_table(path)
    if column not in t.column_names:
        raise RefError(f"{path} has no column {column!r}")
    if not 0 <= row < t.num_rows:
        raise RefError(f"{path} has no row {row} ({t.num_rows} rows)")
    return t.column(column)[row].as_py()


def _parquet_value(path: str, column: str, row: int):
    import bisect
    pf = parquet_file(path)
    starts = pf._rehead_starts
    g = bisect.bisect_right(starts, row) - 1
    if g < 0 or row >= pf.metadata.num_rows:
        raise RefError(f"{path} has no row {row} ({pf.metadata.num_rows} rows)")
    st = _state()
    key = (path, g, column)
    col = st.groups.get(key)
    if col is None:
        try:
            col = pf.read_row_group(g, columns=[column], use_threads=False).column(0)
        except Exception as e:  # noqa: BLE001
            raise RefError(f"cannot read row group {g} of {path}: {e}") from None
        st.groups[key] = col
        while len(st.groups) > MAX_GROUPS:
            st.groups.popitem(last=False)
    else:
        st.groups.move_to_end(key)
    return col[row - starts[g]].as_py()


def _cell_bytes(value, ref: str) -> bytes:
    """An image cell: bytes, or a Hugging Face Image struct {bytes, path} (path: a file to read)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        p = value.get("path")
        if p and os.path.isabs(p) and os.path.isfile(p):
            with open(p, "rb") as f:
                return f.read()
        raise RefError(f"{ref}: the image has no bytes" + (f" and its path {p!r} is not a readable file" if p else ""))
    if value is None:
        raise RefError(f"{ref}: the cell is empty")
    raise RefError(f"{ref}: a {type(value).__name__} is not image bytes")


# -- the interface ---------------------------------------------------------------------------------
def read_bytes(ref: str) -> bytes:
    """The referenced member's or cell's bytes (an image)."""
    scheme, path, loc = parse(ref)
    if scheme == "tar":
        return _tar_bytes(path, loc[0])
    value = (_arrow_value if scheme == "arrow" else _parquet_value)(path, *loc)
    return _cell_bytes(value, ref)


def read_text(ref: str) -> str:
    """The referenced text: a tar member decoded as UTF-8, or a string cell."""
    scheme, path, loc = parse(ref)
    if scheme == "tar":
        data = _tar_bytes(path, loc[0])
        try:
            return data.decode("utf-8-sig").strip()
        except UnicodeDecodeError:
            raise RefError(f"{ref} is not UTF-8 text") from None
    value = (_arrow_value if scheme == "arrow" else _parquet_value)(path, *loc)
    return "" if value is None else str(value)


def digest(ref: str) -> str:
    """sha256 hex of the referenced bytes (equal to the digest of the same image as a file),
    remembered in this process while the container is unchanged. A tar shard is hashed in one
    sequential pass over all its members the first time one of them is asked for."""
    scheme, path, loc = parse(ref)
    s = stamp(path)
    key = (ref, s)
    h = _DIGESTS.get(key)
    if h is None:
        if scheme == "tar":
            _hash_shard(path, s)
            h = _DIGESTS.get(key)
            if h is None:
                raise RefError(f"{path} has no member {loc[0]!r}")
        else:
            h = hashlib.sha256(read_bytes(ref)).hexdigest()
            _DIGESTS[key] = h
    return h


def _hash_shard(path: str, s: tuple) -> None:
    index = tar_index(path)
    with open(path, "rb") as f:
        for member, (off, size) in sorted(index.items(), key=lambda kv: kv[1][0]):
            f.seek(off)
            _DIGESTS[(make("tar", path, member), s)] = hashlib.sha256(f.read(size)).hexdigest()


def content_key(ref: str, cache) -> str:
    """The feature-cache key of a referenced image."""
    return content_keys([ref], cache)[0]


def content_keys(items: list[str], cache) -> list[str]:
    """``content_key`` of many references: each container stat'ed once, and the digests from the
    store's memo (``cache.content_digest``) while the container is unchanged, so a warm run reads
    no shard's bytes; else this process's (every member hashed once per process)."""
    remember = getattr(cache, "content_digest", None)
    if remember is None:
        return [digest(r) for r in items]
    stamps: dict[str, tuple] = {}
    out = []
    for ref in items:
        scheme, path, _ = parse(ref)
        if path not in stamps:
            stamps[path] = stamp(path)
        out.append(remember(ref, f"{scheme}:{path}::", stamps[path], lambda: digest(ref)))
    return out


def close() -> None:
    """Close this process's handles (tests; a long-lived process that is done with its data)."""
    st = _state()
    for fd in st.fds.values():
        os.close(fd)
    st.fds.clear()
    st.arrow.clear()
    st.parquet.clear()
    st.groups.clear()


# -- shuffling that keeps Parquet reads sequential-ish ---------------------------------------------
def row_groups(items: list) -> list[int] | None:
    """Per item, an id of the Parquet row group that holds it; None unless every item is a Parquet
    reference (tar members and Arrow rows are read one by one at any position: no grouping needed)."""
    import bisect
    if not items or not all(isinstance(i, str) and i.startswith(f"parquet:{os.sep}") for i in items):
        return None
    ids: dict[tuple, int] = {}
    out = []
    for i in items:
        _, path, (_, row) = parse(i)
        g = bisect.bisect_right(parquet_file(path)._rehead_starts, row) - 1
        out.append(ids.setdefault((path, g), len(ids)))
    return out


class GroupedShuffle:
    """A sampler for training on Parquet references: each epoch the row groups are shuffled, then
    taken ``window`` at a time and their samples shuffled together, so a process decodes each row
    group once per epoch instead of once per sample (a plain shuffle over row groups of hundreds of
    images decodes hundreds of times more). Deterministic for a seeded ``generator``."""

    def __init__(self, groups: list[int], generator=None, window: int = MAX_GROUPS):
        import numpy as np
        self.groups, self.generator, self.window = np.asarray(groups), generator, max(1, window)

    def __len__(self):
        return len(self.groups)

    def __iter__(self):
        import numpy as np
        import torch
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator).item())
        rng = np.random.default_rng(seed)
        ids = np.unique(self.groups)
        rng.shuffle(ids)
        members = {int(g): np.flatnonzero(self.groups == g) for g in ids}
        for s in range(0, len(ids), self.window):
            idx = np.concatenate([members[int(g)] for g in ids[s:s + self.window]])
            rng.shuffle(idx)
            yield from idx.tolist()
