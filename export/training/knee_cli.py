"""``xr3d train knee-landmarks`` and ``xr3d eval knee-landmarks``: argparse glue (torch imported lazily)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from appliance.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["register_eval_knee", "register_train_knee", "run_eval_knee", "run_train_knee"]

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


def _say(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def register_train_knee(tsub: Any) -> None:
    p = tsub.add_parser(
        "knee-landmarks",
        help="train the knee AP / lateral landmark model and export it to ONNX",
        description=(
            "Train the knee landmark network (both views, 0.5 mm/px) on the knee films of the simulated "
            "training cases of --data (train-range seeds only; simulate with --views knee-ap,knee-lat) with "
            "recorded on-the-fly augmentation, within a wall-clock budget; write loss_curve.png and "
            "train_report.json to --out, knee_landmarks.{pt,onnx} to --models-dir (default --out), and "
            "check ONNX Runtime against PyTorch (< 1e-3). Deterministic by --seed (with --steps)."
        ),
    )
    p.add_argument("--data", type=Path, required=True, help="folder of case_<seed> training cases")
    p.add_argument("--out", type=Path, required=True, help="output folder (loss curve, report)")
    p.add_argument("--seed", type=int, required=True, help="training seed (weights, sampling, augmentation)")
    p.add_argument("--minutes", type=float, default=40.0, help="wall-clock budget (default 40)")
    p.add_argument("--steps", type=int, default=None, help="fixed step count instead of the budget")
    p.add_argument(
        "--models-dir", type=Path, default=None, help=f"where the ONNX/.pt go (shipped: {REPO_MODELS})"
    )
    p.add_argument("--max-cases", type=int, default=None, help="use only the first N cases")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--init-from", type=Path, default=None, help="start from DIR/knee_landmarks.pt")
    p.set_defaults(func=run_train_knee)


def run_train_knee(args: argparse.Namespace) -> int:
    from export.training.knee_landmarks import KneeTrainConfig, train_knee_landmarks

    if args.minutes <= 0:
        raise InputError("--minutes must be positive", reason="bad_argument")
    res = train_knee_landmarks(
        KneeTrainConfig(
            data=args.data,
            out=args.out,
            seed=int(args.seed),
            minutes=float(args.minutes),
            steps=int(args.steps) if args.steps else None,
            models_dir=args.models_dir,
            max_cases=args.max_cases,
            threads=int(args.threads),
            init_from=args.init_from,
        )
    )
    _say(
        f"trained on {len(res.train_seeds)} cases (seeds {min(res.train_seeds)}-{max(res.train_seeds)}), "
        f"{res.steps} steps, final loss {res.final_loss:.4f}"
    )
    _say(
        f"ONNX {res.onnx} (ORT vs PyTorch max |diff| {res.parity_max_abs_diff:.2e}); "
        f"loss curve {res.loss_plot}"
    )
    return 0


def register_eval_knee(esub: Any) -> None:
    p = esub.add_parser(
        "knee-landmarks",
        help="knee AP / lateral landmark error (mm), JLCA, slope and flexion errors, timing",
        description=(
            "Run the ONNX knee landmark detector (through engines) on the knee films of every eval-range "
            "case of --data: per-landmark error in mm at the patient (median, 95th percentile), JLCA MAE on "
            "knee AP films, posterior tibial slope and knee flexion MAE on lateral films, seconds per film. "
            "Training-range seeds are refused."
        ),
    )
    p.add_argument("--data", type=Path, required=True, help="folder of case_<seed> eval cases")
    p.add_argument("--models-dir", type=Path, default=None, help=f"ONNX folder (default {REPO_MODELS})")
    p.add_argument("--json", action="store_true", help="print the full summary as JSON on stdout")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    p.set_defaults(func=run_eval_knee)


def run_eval_knee(args: argparse.Namespace) -> int:
    from engines.config import EngineConfig
    from export.evaluation.knee_eval import evaluate_knee, format_knee_summary

    summary = evaluate_knee(
        args.data, args.models_dir, EngineConfig(backend="auto", cpu_threads=int(args.threads))
    )
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        sys.stdout.write(format_knee_summary(summary) + "\n")
    return 0
