"""LogME ranking of every image backbone loadable offline on hymenoptera, checked by linear probes."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._issue5 import HYMENOPTERA, write  # noqa: E402

CANDIDATES = ["packaged:efficientnet_lite0", "packaged:efficientnet_lite1", "packaged:efficientnet_lite2",
              "packaged:efficientnet_lite0@6", "packaged:efficientnet_lite0@4"]


def main():
    from rehead.experiments.rank import rank
    tmp = Path(tempfile.mkdtemp(prefix="bench-rank-"))
    res = rank(str(HYMENOPTERA), CANDIDATES, out=tmp / "rank", cache_dir=str(tmp / "cache"), workers=2,
               progress=False)
    from rehead.report import write_report
    write_report(tmp / "rank", echo=lambda *_: None)
    write("rank_backbones", {"data": str(HYMENOPTERA), "candidates": CANDIDATES,
                             "rows": [{k: r[k] for k in ("rank", "model", "cut", "stage", "dim", "input_size", "logme",
                                                         "probe_val_acc", "extract_seconds", "logme_seconds")}
                                      for r in res["rows"]],
                             "agreement": res["agreement"], "unavailable": res["unavailable"],
                             "total_seconds": res["total_seconds"], "run_dir": str(tmp / "rank")},
          pngs={"rank_hymenoptera.png": tmp / "rank" / "rank.png"})


if __name__ == "__main__":
    main()
