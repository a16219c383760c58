"""Fine-tuning: train each task in turn with no protection of earlier ones (the paper's c = 0 baseline)."""
from clframework.plugin import Strategy, register_strategy


@register_strategy("naive")
class Naive(Strategy):
    """Fine-tuning (no consolidation)."""
