"""A study's seeds: a count N (seeds 0..N-1) or seeds named one by one (`0,3,7`, ranges `10-14`), so that a study
can add seeds to another or repeat one seed of it. Torch-free: the command line checks `--seeds` at once."""
from __future__ import annotations

import re
from typing import List, Sequence, Union

Seeds = Union[int, Sequence[int]]
HELP = "N: seeds 0..N-1; or the seeds themselves, with commas and ranges: 0,3,7 or 10-14 (one seed alone: 7,)"


def parse_seeds(text: str) -> Seeds:
    """`--seeds`'s value: "3" -> 3 (a count); "0,3,7", "10-14", "7," -> the named seeds, as a list."""
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        seed_list(int(text))  # 0: refused
        return int(text)
    named = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        bounds = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if bounds is None or (bounds.group(2) is not None and int(bounds.group(2)) < int(bounds.group(1))):
            raise ValueError(f"--seeds takes a count or seeds named with commas and ranges (N: seeds 0..N-1; "
                             f"0,3,7; 10-14; one seed alone: 7,), got {text!r}")
        first, last = int(bounds.group(1)), int(bounds.group(2) or bounds.group(1))
        named += range(first, last + 1)
    if not named:
        raise ValueError(f"--seeds names no seed: {text!r}; give a count (3) or the seeds (0,3,7)")
    return seed_list(named)


def seed_list(seeds: Seeds) -> List[int]:
    """The seeds a study runs, in order: a count N is 0..N-1; a sequence is checked (integers >= 0, none twice,
    at least one). ValueError names the problem."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"--seeds must be an integer >= 1, got {seeds!r} (or name the seeds: 0,3,7)")
        return list(range(seeds))
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise ValueError(f"seeds must be a count N (seeds 0..N-1) or a list of seeds, got {seeds!r}")
    seeds = list(seeds)
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad or not seeds:
        raise ValueError(f"seeds must be integers >= 0, at least one, got {seeds!r}")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ValueError(f"seed(s) {', '.join(map(str, twice))} named more than once in --seeds; name each once")
    return seeds
