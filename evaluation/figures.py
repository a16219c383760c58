"""Which figures a command writes (`--plots`, `--plot-format`): apart from the drawing code, so that a process that
draws nothing (a `--jobs` worker) does not import matplotlib."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

FORMATS = ("png", "pdf", "svg")
SCOPES = ("all", "study", "none")


@dataclass(frozen=True)
class Figures:
    """Which figures a command writes. runs: each run's own (matrix, training curves, omega); study: a study's
    (Figs. 3-6); formats: file formats, PNG and PDF by default (drawing a figure costs more than training a small
    run)."""

    runs: bool = True
    study: bool = True
    formats: Tuple[str, ...] = ("png", "pdf")

    def __post_init__(self):
        check_formats(self.formats)

    @classmethod
    def parse(cls, plots: str = "all", formats: str = "png,pdf") -> "Figures":
        """From `--plots all|study|none` and `--plot-format png,pdf|png|svg|...`; a bad value names the choices."""
        if plots not in SCOPES:
            raise ValueError(f"--plots must be one of {', '.join(SCOPES)}, got {plots!r}")
        return cls(runs=plots == "all", study=plots != "none",
                   formats=tuple(f.strip() for f in str(formats).split(",") if f.strip()))


def check_formats(formats: Sequence[str]) -> None:
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats or len(set(formats)) != len(formats):
        raise ValueError(f"figure formats must be a comma-separated subset of {', '.join(FORMATS)} (e.g. png or "
                         f"png,pdf), got {','.join(formats) or '(none)'}")
