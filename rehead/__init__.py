"""rehead: transfer learning in one command."""
import os

# Idle OpenMP threads sleep instead of spinning. On a few shared cores (DataLoader workers,
# other processes) spinning threads steal the CPU the busy ones need: with the default, a
# cached `rehead fit` (tiny head, many small ops) ran ~3.5x slower on 2 busy cores. Read by
# libgomp when torch is first imported, so it only applies if rehead is imported first;
# an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .fit import fit
from .model import TransferModel
from .run import Run
from .zoo import Backbone, list_models, load

from .version import __version__

__all__ = ["load", "list_models", "Backbone", "TransferModel", "fit", "Run", "__version__"]
