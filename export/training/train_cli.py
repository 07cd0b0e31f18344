"""``xr3d train landmarks`` and ``xr3d eval landmarks``: argparse glue (torch is imported lazily)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from appliance.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["register", "register_eval", "run_eval_landmarks", "run_train_landmarks"]

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


def _say(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def register(sub: Any) -> None:
    """``xr3d train landmarks``."""
    p = sub.add_parser("train", help="train models on simulated cases")
    tsub = p.add_subparsers(dest="train_target", metavar="MODEL", required=True)
    pl = tsub.add_parser(
        "landmarks",
        help="train the long-leg landmark model (whole film, crops, fine patches) and export it to ONNX",
        description=(
            "Train the whole-film (2 mm/px) and crop (0.5 mm/px) landmark networks (--minutes), then the "
            "fine patch network (0.25 mm/px, --fine-minutes), on the simulated training cases of --data "
            "(train-range seeds only) with recorded on-the-fly augmentation, within wall-clock budgets; "
            "write loss curves, a checkpoint and train reports to --out, export the stages to ONNX with "
            "metadata and check ONNX Runtime against PyTorch (< 1e-3). --stages fine trains stage 3 alone."
        ),
    )
    pl.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder of case_<seed> training cases (default: simulate --cases of them into OUT/data first)",
    )
    pl.add_argument(
        "--cases",
        type=int,
        default=40,
        help="without --data: how many cases to simulate (default 40; resumable; recipe mix and seeds in "
        "export/training/landmark_data.py)",
    )
    pl.add_argument(
        "--sim-workers", type=int, default=2, help="without --data: parallel simulation processes (default 2)"
    )
    pl.add_argument("--out", type=Path, required=True, help="output folder (loss curve, checkpoint, report)")
    pl.add_argument("--seed", type=int, required=True, help="training seed (weights, sampling, augmentation)")
    pl.add_argument("--minutes", type=float, default=25.0, help="wall-clock budget (default 25)")
    pl.add_argument(
        "--steps",
        type=int,
        nargs=2,
        metavar=("STAGE1", "STAGE2"),
        help="fixed step counts instead of the budget (replays a run from its train_report.json)",
    )
    pl.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help=f"where the ONNX/.pt files go (default: --out; the shipped ones live in {REPO_MODELS})",
    )
    pl.add_argument("--max-cases", type=int, default=None, help="use only the first N cases")
    pl.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    pl.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from the weights in DIR/landmarks_{whole,crop,fine}.pt (a stage whose network differs "
        "or whose file is missing starts from a random init)",
    )
    pl.add_argument(
        "--stages",
        choices=("all", "fine"),
        default="all",
        help="all: stages 1-2 then the fine patch stage 3; fine: stage 3 alone (its patches are cut "
        "around the truth, so it does not need the other stages' weights)",
    )
    pl.add_argument(
        "--fine-minutes", type=float, default=20.0, help="stage 3 budget, on top of --minutes (default 20)"
    )
    pl.add_argument("--fine-steps", type=int, default=None, help="stage 3: fixed step count instead")
    pl.set_defaults(func=run_train_landmarks)
    from export.recon.cli import register_train as _register_recon_train

    _register_recon_train(tsub)
    from export.training.knee_cli import register_train_knee

    register_train_knee(tsub)


def run_train_landmarks(args: argparse.Namespace) -> int:
    from export.training.landmarks import TrainConfig

    if args.minutes <= 0:
        raise InputError("--minutes must be positive", reason="bad_argument")
    if args.data is None:
        args.data = _simulate_training_set(args)
    cfg = TrainConfig(
        data=args.data,
        out=args.out,
        seed=int(args.seed),
        minutes=float(args.minutes),
        steps=(int(args.steps[0]), int(args.steps[1])) if args.steps else None,
        models_dir=args.models_dir,
        max_cases=args.max_cases,
        threads=int(args.threads),
        init_from=args.init_from,
    )
    if args.stages == "all":
        _train_two_stages(cfg)
    _train_fine_stage(args)
    return 0


def _simulate_training_set(args: argparse.Namespace) -> Path:
    from export.training.landmark_data import MAX_CASES, ensure_training_cases

    if not 1 <= args.cases <= MAX_CASES:
        raise InputError(f"--cases must be within 1..{MAX_CASES}", reason="bad_argument")
    ts = ensure_training_cases(
        args.out / "data", int(args.seed), int(args.cases), workers=max(1, int(args.sim_workers))
    )
    _say(
        f"training set: {len(ts.seeds)} simulated cases (seeds {ts.seeds[0]}-{ts.seeds[-1]}) in {ts.root}, "
        f"{ts.generated} made now in {ts.seconds / 60:.1f} min"
    )
    return ts.root


def _train_fine_stage(args: argparse.Namespace) -> None:
    from export.training.landmarks_fine import FINE_PT, FineConfig, train_fine

    if args.fine_minutes <= 0:
        raise InputError("--fine-minutes must be positive", reason="bad_argument")
    # --init-from also seeds stage 3 when that folder holds its weights
    init = args.init_from if args.init_from is not None and (args.init_from / FINE_PT).is_file() else None
    res = train_fine(
        FineConfig(
            data=args.data,
            out=args.out,
            seed=int(args.seed),
            minutes=float(args.fine_minutes),
            steps=int(args.fine_steps) if args.fine_steps else None,
            models_dir=args.models_dir,
            max_cases=args.max_cases,
            threads=int(args.threads),
            init_from=init,
        )
    )
    _say(
        f"fine stage: {res.steps} steps in {res.minutes:.1f} min, final loss {res.final_loss:.4f}, "
        f"ONNX {res.onnx}, parity {dict(res.parity)}, report {res.report}"
    )


def _train_two_stages(cfg: Any) -> None:
    from export.training.landmarks import train_landmarks

    res = train_landmarks(cfg)
    _say(
        f"trained on {len(res.train_seeds)} cases (seeds {min(res.train_seeds)}-{max(res.train_seeds)}), "
        f"steps {res.steps[0]} + {res.steps[1]}, final loss {res.final_loss[0]:.4f} / {res.final_loss[1]:.4f}"
    )
    _say(f"ONNX: {', '.join(str(p) for p in res.onnx)}; parity {dict(res.parity)}")
    _say(f"loss curve {res.loss_plot}, checkpoint {res.checkpoint}, report {res.report}")


def register_eval(sub: Any) -> None:
    """``xr3d eval landmarks``."""
    p = sub.add_parser("eval", help="evaluate trained models on held-out simulated cases")
    esub = p.add_subparsers(dest="eval_target", metavar="MODEL", required=True)
    pl = esub.add_parser(
        "landmarks",
        help="landmark error (mm), angle errors, CPAK agreement and timing on eval-range cases",
        description=(
            "Run the ONNX landmark detector (through engines) on every eval-range case of --data and "
            "report per-landmark error in mm at the patient (median, 95th percentile), MAE and 95th "
            "percentile of mHKA, mLDFA, MPTA and JLCA, CPAK type agreement and seconds per film, "
            "against the issue-4 targets. Training-range seeds are refused."
        ),
    )
    pl.add_argument("--data", type=Path, required=True, help="folder of case_<seed> eval cases")
    pl.add_argument("--models-dir", type=Path, default=None, help=f"ONNX folder (default {REPO_MODELS})")
    pl.add_argument("--json", action="store_true", help="print the full summary as JSON on stdout")
    pl.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all)")
    pl.set_defaults(func=run_eval_landmarks)
    from export.recon.cli import register_eval as _register_recon_eval

    _register_recon_eval(esub)
    from export.training.knee_cli import register_eval_knee

    register_eval_knee(esub)


def run_eval_landmarks(args: argparse.Namespace) -> int:
    from engines.config import EngineConfig
    from export.evaluation.landmarks_eval import evaluate
    from export.evaluation.landmarks_report import format_summary

    summary = evaluate(
        args.data, args.models_dir, EngineConfig(backend="auto", cpu_threads=int(args.threads))
    )
    if args.json:
        sys.stdout.write(json.dumps(summary.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(format_summary(summary) + "\n")
    return 0
