"""The built-in strategies; importing this package registers them."""
from .ewc import EWC, fisher_diagonal
from .naive import Naive
from .si import SI

__all__ = ["EWC", "Naive", "SI", "fisher_diagonal"]
