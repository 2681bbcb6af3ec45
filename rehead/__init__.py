"""rehead: transfer learning in one command."""
from .fit import fit
from .model import TransferModel
from .run import Run
from .zoo import Backbone, list_models, load

__all__ = ["load", "list_models", "Backbone", "TransferModel", "fit", "Run"]
__version__ = "0.1.0"
