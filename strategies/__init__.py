"""The built-in strategies; importing this package registers them."""
from .agem import AGEM, agem_project
from .cumulative import Cumulative, Joint
from .der import DER, DERpp, der_loss, logit_loss
from .er import ER
from .er_ace import ERACE, masked_cross_entropy
from .ewc import EWC, fisher_diagonal
from .gdumb import GDumb, greedy_balanced
from .icarl import ICaRL, herding, nme_scores
from .lwf import LwF, distillation_loss
from .mas import MAS, mas_importance
from .mir import MIR, most_interfered
from .naive import Naive
from .memory import ReplayMemory, reservoir_slots
from .replay import Replay
from .si import SI

__all__ = ["AGEM", "Cumulative", "DER", "DERpp", "ER", "ERACE", "EWC", "GDumb", "ICaRL", "Joint", "LwF", "MAS",
           "MIR", "Naive", "Replay", "ReplayMemory", "SI", "agem_project", "der_loss", "distillation_loss", "fisher_diagonal",
           "greedy_balanced", "herding", "logit_loss", "mas_importance", "masked_cross_entropy", "most_interfered", "nme_scores",
           "reservoir_slots"]
