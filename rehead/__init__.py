"""rehead: transfer learning in one command."""
import os

# Idle OpenMP threads sleep instead of spinning. On a few shared cores (DataLoader workers,
# other processes) spinning threads steal the CPU the busy ones need: with the default, a
# cached `rehead fit` (tiny head, many small ops) ran ~3.5x slower on 2 busy cores. Read by
# libgomp when torch is first imported, so it only applies if rehead is imported first;
# an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .version import __version__  # noqa: E402

# The API is imported on first use, so `rehead --help` (which imports this package) never
# pays for torch.
_API = {"fit": ".fit", "find_lr": ".fit", "FitConfig": ".config", "TransferModel": ".model", "Run": ".run",
        "open_run": ".runs", "Backbone": ".zoo", "list_models": ".zoo", "load": ".zoo"}


def __getattr__(name):
    if name in _API:
        import importlib
        return getattr(importlib.import_module(_API[name], __name__), name)
    raise AttributeError(f"module 'rehead' has no attribute {name!r}")


__all__ = ["load", "list_models", "Backbone", "TransferModel", "fit", "find_lr", "FitConfig", "Run", "open_run",
           "__version__"]
