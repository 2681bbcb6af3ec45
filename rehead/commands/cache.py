"""``rehead cache info|clear|gc``: the shared feature store (rehead.store)."""
from __future__ import annotations

import json
import time
from typing import Optional

import typer

from ..cli import app, fail, guarded

cache_app = typer.Typer(no_args_is_help=True, help="The shared feature cache.")
app.add_typer(cache_app, name="cache")

CACHE_DIR = typer.Option(None, "--cache-dir", help="the cache root (default $REHEAD_CACHE or ~/.cache/rehead)")


def _store(cache_dir):
    from ..store import ShardStore
    st = ShardStore(cache_dir)
    # errors suggest what these commands take (no --no-cache here)
    st.remedy = "pass --cache-dir DIR (or set REHEAD_CACHE) naming a writable cache"
    st.elsewhere = "pass another --cache-dir DIR (or set REHEAD_CACHE)"
    if st.root.exists() and not st.root.is_dir():  # REHEAD_CACHE or --cache-dir naming a file
        fail(f"the feature cache {st.root} is a file, not a folder: point --cache-dir or REHEAD_CACHE at a folder")
    return st


def _absent(st, cache_dir) -> bool:
    """Say so when there is no cache to read: a typo'd --cache-dir read as an empty cache before."""
    if not st.root.exists():
        typer.echo(f"no feature cache at {st.root}: the folder does not exist"
                   + (" (check --cache-dir)" if cache_dir else " (the first fit creates it)"))
        return True
    if not st.is_marked() and not (st.root / "index.sqlite").exists() and not st.is_empty():
        from ..store import MARKER
        typer.echo(f"{st.root} is not a rehead feature cache (no {MARKER} of rehead's, no index): "
                   "nothing of it is counted or touched; check --cache-dir / REHEAD_CACHE")
        return True
    return False


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@cache_app.command("info")
@guarded
def cache_info(cache_dir: Optional[str] = CACHE_DIR, as_json: bool = typer.Option(False, "--json")):
    """Where the feature cache is: model keys, shards, samples and bytes; snapshots."""
    st = _store(cache_dir)
    if not as_json and _absent(st, cache_dir):
        return
    s = st.size()
    if as_json:
        typer.echo(json.dumps(s, indent=1))
        return
    typer.echo(f"{s['path']}: {s['models']} model key(s), {s['shards']} shard(s), {s['entries']} sample(s), "
               f"{_mb(s['bytes'])} of features (+{_mb(s['index_bytes'])} index); "
               f"{s['snapshots']} backbone snapshot(s) {_mb(s['snapshot_bytes'])}")
    if s["missing_shards"]:
        n = s["missing_shards"]
        gone = "entry points to a missing shard file" if n == 1 else "entries point to missing shard files"
        typer.echo(f"  {n} index {gone} (deleted by hand?), not counted above: run `rehead cache gc` to forget them")
    for m in s["per_model"]:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(m["last_used"]))
        typer.echo(f"  {m['key']}  dim {m['dim']:<5} {m['samples']:>8} samples {m['shards']:>5} shards "
                   f"{_mb(m['bytes']):>10}  last used {used}  {m['name'] or '(unnamed: cached before names)'}")


@cache_app.command("clear")
@guarded
def cache_clear(cache_dir: Optional[str] = CACHE_DIR, yes: bool = typer.Option(False, "--yes", "-y")):
    """Delete every cached feature and snapshot. Only a directory carrying rehead's marker."""
    from ..store import MARKER
    st = _store(cache_dir)
    if st.is_empty():
        typer.echo(f"nothing to clear: {st.root} is empty or absent")
        return
    if not st.is_marked():
        fail(f"{st.root} does not carry rehead's cache marker ({MARKER}): not deleting anything")
    if not yes:
        import sys
        if not sys.stdin.isatty():  # no one to answer: typer's confirm would abort with a bare "Abort"
            fail(f"not deleting {st.root} without a confirmation: pass -y (no terminal to ask on)")
        if not typer.confirm(f"delete the feature cache at {st.root}?"):
            raise typer.Exit(1)
    failed = st.clear()
    if failed:
        fail(f"could not delete {len(failed)} path(s) in {st.root}: " + ", ".join(failed[:5])
             + (" ..." if len(failed) > 5 else "") + " (read-only or in use?)", code=1)
    typer.echo(f"cleared {st.root}")


@cache_app.command("gc")
@guarded
def cache_gc(max_size: Optional[str] = typer.Option(None, "--max-size",
                                                    help="evict least-recently-used model keys until the "
                                                         "features fit, e.g. 500MB, 2GB (backbone snapshots are "
                                                         "not counted: `cache clear` removes them)"),
             cache_dir: Optional[str] = CACHE_DIR):
    """Drop unreferenced shards; with --max-size, evict least-recently-used model keys."""
    from ..store import parse_size
    limit = parse_size(max_size) if max_size is not None else None
    st = _store(cache_dir)
    if _absent(st, cache_dir):
        return
    res = st.gc(limit)
    left = st.size()
    typer.echo(f"freed {_mb(res['freed_bytes'])}; evicted {len(res['evicted'])} model key(s)"
               + (f" ({', '.join(res['evicted'])})" if res["evicted"] else "")
               + f"; forgot {res['forgotten_files']} file(s) gone or changed since they were read"
               + (f" and {res['missing_shards']} shard(s) whose file was deleted" if res["missing_shards"] else "")
               + f"; {_mb(left['bytes'])} of features left in {left['path']}"
               + (f" (and {left['snapshots']} backbone snapshot(s), {_mb(left['snapshot_bytes'])}, which "
                  "--max-size does not count)" if left.get("snapshots") else ""))
