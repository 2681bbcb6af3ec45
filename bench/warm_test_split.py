"""A warm `rehead fit --strategy extract` on a set with a test split, then `rehead evaluate` of the
run on that split: the test split scored from the store (now) against the code before it was (the
run's model built and run over the test split live), side by side on one store, interleaved.

"before" runs another checkout of rehead (``--before REV``, default the commit before the change,
made as a git worktree) with the same command and cache; both arms are warm: every train and val
feature is in the store.

    PYTHONPATH=.:bench python bench/warm_test_split.py [--before eae2cbd] [--reps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine, median, write  # noqa: E402

SETS = {"rt_polarity": "text", "financial_phrasebank_allagree": "text"}


def rehead(tree: Path, args: list[str], out: list | None = None) -> float:
    """`rehead ARGS` from the checkout at ``tree``, in a fresh process; its wall seconds (its
    standard output appended to ``out`` when given)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "rehead", *args], env=env, check=True, cwd=tree,
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seconds = time.perf_counter() - t0
    if out is not None:
        out.append(r.stdout)
    return seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="eae2cbd", help="the checkout the 'before' arm runs")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sets", nargs="*", default=list(SETS))
    ap.add_argument("--name", default="warm_test_split")
    a = ap.parse_args()
    started = machine()
    figures, extra = {}, {"what": __doc__.split("\n\n")[0], "before": a.before}
    with tempfile.TemporaryDirectory(prefix="rehead-warm-test-") as tmp:
        tmp = Path(tmp)
        old = tmp / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), a.before], cwd=REPO, check=True,
                       capture_output=True)
        try:
            for tree in (REPO, old):  # each arm imports its own checkout, not the installed one
                where = subprocess.run([sys.executable, "-c", "import rehead; print(rehead.__file__)"], cwd=tree,
                                       env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True,
                                       text=True, check=True).stdout.strip()
                assert Path(where).resolve().is_relative_to(tree.resolve()), (tree, where)
            for name in a.sets:
                data = REPO.parent / "shared" / "datasets" / name
                cache = tmp / f"cache_{name}"
                args = ["fit", str(data), "--model", "packaged:minilm", "--strategy", "extract",
                        "--cache-dir", str(cache), "-q", "--overwrite"]
                row = {"cold_s": rehead(REPO, args + ["--out", str(tmp / f"{name}_cold")])}
                t = {"now": [], "before": []}
                for _ in range(a.reps):  # interleaved: the load moves under both alike
                    for arm, tree in (("now", REPO), ("before", old)):
                        t[arm].append(rehead(tree, args + ["--out", str(tmp / f"{name}_{arm}")]))
                # `rehead evaluate RUN DATA` (its test split) of the fitted run, by each checkout
                ev, said = {"now": [], "before": []}, {"now": [], "before": []}
                for _ in range(a.reps):
                    for arm, tree in (("now", REPO), ("before", old)):
                        ev[arm].append(rehead(tree, ["evaluate", str(tmp / f"{name}_{arm}"), str(data), "--json"],
                                              said[arm]))
                row.update({f"evaluate_{arm}_s": median(v) for arm, v in ev.items()}, evaluate_s_all=ev,
                           evaluate_accuracy={arm: sorted({json.loads(o)["accuracy"] for o in v})
                                              for arm, v in said.items()})
                summaries = {arm: json.loads((tmp / f"{name}_{arm}" / "summary.json").read_text())
                             for arm in ("cold", "now", "before")}
                row.update({f"warm_{arm}_s": median(v) for arm, v in t.items()}, warm_s_all=t,
                           test_n=summaries["now"]["test_n"],
                           test_acc={arm: s["test_acc"] for arm, s in summaries.items()},
                           val_acc={arm: s["val_acc"] for arm, s in summaries.items()})
                figures[name] = row
                extra["command"] = "rehead " + " ".join(args[:1] + ["DATA"] + args[2:]) + " --out OUT"
                write(a.name, figures, started=started, extra=extra)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO, capture_output=True)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
