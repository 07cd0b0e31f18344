"""The simulated long-leg training set ``xr3d train landmarks`` makes for itself when no ``--data`` is given.

Each case is one recipe of a fixed cycle, so a set of N cases has a known mix whatever N is, and every
case is replayable from its seed (the simulator records everything random about it in truth.json):

=====================  =====  ===================================================================
recipe                 share  why
=====================  =====  ===================================================================
bilateral              4/10   the usual standing film: both legs, random side measured
one_leg                2/10   PACS exports and single-leg films (films.md)
robustness             2/10   implants, osteophytes, sclerosis: orthopaedic patients
left_bilateral         1/10   left legs are the weaker side of the 0.3 models (docs/landmarks.md)
with_labels            1/10   CT + label volumes written, so the bone-mask head has targets
=====================  =====  ===================================================================

Seeds: ``SEED_BASE + (seed % SEED_SLOTS) * SLOT_SIZE + k`` for case k, inside the training range
(0-499999, ``export.datasets.landmark_samples``): the evaluation range is never touched. Cases already
complete in the folder are kept (the generation is resumable: an interrupted run picks up where it was).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from tqdm import tqdm

from export.datasets.landmark_samples import check_seeds
from export.simulator.case import CaseOptions, generate_case
from export.simulator.params import SamplingOptions

log = logging.getLogger(__name__)

__all__ = ["RECIPES", "SEED_BASE", "TrainingSet", "ensure_training_cases", "recipe_for", "training_seeds"]

SEED_BASE: Final = 300000
SLOT_SIZE: Final = 500
SEED_SLOTS: Final = 380  # SEED_BASE + SEED_SLOTS * SLOT_SIZE = 490000 < 500000 (training range)
MAX_CASES: Final = SLOT_SIZE

_BASE = CaseOptions(views=("longleg",), write_ct=False)
RECIPES: Final[tuple[tuple[str, CaseOptions], ...]] = (
    ("bilateral", _BASE),
    ("one_leg", replace(_BASE, contralateral=False)),
    (
        "robustness",
        replace(_BASE, sampling=SamplingOptions(implants=True, osteophytes=True, sclerosis=True)),
    ),
    ("bilateral", _BASE),
    ("left_bilateral", replace(_BASE, sampling=SamplingOptions(side="left"))),
    ("bilateral", _BASE),
    ("one_leg", replace(_BASE, contralateral=False)),
    (
        "robustness",
        replace(_BASE, sampling=SamplingOptions(implants=True, osteophytes=True, sclerosis=True)),
    ),
    ("bilateral", _BASE),
    ("with_labels", replace(_BASE, write_ct=True)),
)


@dataclass(frozen=True)
class TrainingSet:
    root: Path
    seeds: tuple[int, ...]
    generated: int
    seconds: float


def training_seeds(seed: int, n_cases: int) -> tuple[int, ...]:
    """The simulator seeds of a training set of ``n_cases`` for training seed ``seed``."""
    if not 1 <= n_cases <= MAX_CASES:
        raise ValueError(f"n_cases must be within 1..{MAX_CASES}, got {n_cases}")
    first = SEED_BASE + (seed % SEED_SLOTS) * SLOT_SIZE
    seeds = tuple(first + k for k in range(n_cases))
    check_seeds(seeds, "train")
    return seeds


def recipe_for(case_seed: int) -> tuple[str, CaseOptions]:
    return RECIPES[(case_seed - SEED_BASE) % SLOT_SIZE % len(RECIPES)]


def _complete(root: Path, s: int) -> bool:
    case = root / f"case_{s}"
    return (case / "truth.json").is_file() and (case / "longleg_ap.dcm").is_file()


def _make(s: int, root: Path) -> int:
    generate_case(s, root, recipe_for(s)[1])
    return s


def ensure_training_cases(
    root: Path,
    seed: int,
    n_cases: int,
    *,
    workers: int = 1,
    make: Callable[[int, Path], int] = _make,
) -> TrainingSet:
    """Simulate the cases of ``training_seeds(seed, n_cases)`` missing under ``root`` (see the module
    docstring); returns the set. ``workers`` > 1 renders cases in parallel processes."""
    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    seeds = training_seeds(seed, n_cases)
    todo = [s for s in seeds if not _complete(root, s)]
    log.info("training set: %d of %d cases to simulate under %s", len(todo), len(seeds), root)
    bar = tqdm(total=len(todo), desc="simulate", unit="case", file=sys.stderr, disable=None or not todo)
    if workers <= 1 or len(todo) <= 1:
        for s in todo:
            make(s, root)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for fut in as_completed([pool.submit(make, s, root) for s in todo]):
                fut.result()  # a failed case stops the run: training on a silently smaller set would lie
                bar.update()
    bar.close()
    return TrainingSet(root, seeds, len(todo), time.perf_counter() - t0)
