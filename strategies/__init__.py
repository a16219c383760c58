"""The built-in strategies; importing this package registers them."""
from .agem import AGEM, agem_project
from .ewc import EWC, fisher_diagonal
from .lwf import LwF, distillation_loss
from .mas import MAS, mas_importance
from .naive import Naive
from .replay import Replay, ReplayMemory, reservoir_slots
from .si import SI

__all__ = ["AGEM", "EWC", "LwF", "MAS", "Naive", "Replay", "ReplayMemory", "SI", "agem_project", "distillation_loss",
           "fisher_diagonal", "mas_importance", "reservoir_slots"]
