"""``xr3d train recon`` and ``xr3d eval recon`` (registered from export/training/train_cli.py)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from appliance.errors import InputError

log = logging.getLogger(__name__)

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


def _say(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def _progress_to_stderr() -> None:
    """Training progress (every 25 steps) and sample generation go to stderr at INFO."""
    lg = logging.getLogger("export.recon")
    if not any(getattr(h, "_xr3d_recon", False) for h in lg.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        h._xr3d_recon = True  # type: ignore[attr-defined]
        lg.addHandler(h)
    lg.setLevel(logging.INFO)
    lg.propagate = False


def register_train(tsub: Any) -> None:
    p = tsub.add_parser(
        "recon",
        help="train the knee reconstruction GAN (films + geometry -> HU + bone labels) and export it",
        description=(
            "Generate compact training samples (training-range seeds from --seed; resumable, "
            "skipped with --data) and train the geometry-driven implicit decoder with HU, label, projection "
            "and adversarial losses within a wall-clock budget; write loss_curve.png, recon.pt and "
            "train_report.json to --out and export recon_encoder.onnx / recon_decoder.onnx with a PyTorch "
            "vs ONNX Runtime parity check."
        ),
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, required=True, help="training seed (weights, sampling)")
    p.add_argument("--data", type=Path, default=None, help="folder of recon_<seed>_<pose>.npz samples")
    p.add_argument("--anatomies", type=int, default=150, help="anatomies to generate without --data")
    p.add_argument("--first-seed", type=int, default=20000, help="first simulator seed to generate")
    p.add_argument("--poses", type=int, default=2, help="re-rendered acquisitions per anatomy")
    p.add_argument("--minutes", type=float, default=40.0, help="training wall-clock budget (default 40)")
    p.add_argument("--steps", type=int, default=None, help="fixed step count instead of the budget")
    p.add_argument("--models-dir", type=Path, default=None, help="where the ONNX files go (default --out)")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on the shared 2-core box 2 threads were ~20x slower per step)",
    )
    p.add_argument("--rescan-steps", type=int, default=0, help="pick up new samples every N steps")
    p.add_argument("--hidden", type=int, default=64, help="decoder MLP width (default 64)")
    p.add_argument(
        "--learned", type=int, default=16, help="learned film-encoder maps (default 16; 0: fixed bank)"
    )
    p.add_argument(
        "--fine-film",
        type=int,
        default=0,
        help="channels of a full-resolution (0.75 mm) level in the learned film CNN (default 0: none); "
        "a warm start gains it with a zero head, so it starts from the old model's output",
    )
    p.add_argument(
        "--context",
        type=int,
        default=16,
        help="channels of the 3D shape context (default 16; 0: none, the recon-1.1 architecture)",
    )
    p.add_argument(
        "--context-grid",
        type=int,
        default=32,
        help="3D context points per axis, a multiple of 4 (default 32: 4.6 mm voxels; 48: 3 mm)",
    )
    p.add_argument("--init-from", type=Path, default=None, help="warm start from a recon.pt")
    p.add_argument("--n-small", type=int, default=1024, help="points near fibula/patella surfaces per sample")
    p.add_argument(
        "--n-bone",
        type=int,
        default=0,
        help="points near the femur/tibia boundaries per sample (default 0; recon-1.6 was trained with 1024)",
    )
    p.add_argument(
        "--n-hard",
        type=int,
        default=0,
        help="online hard-point mining: the N worst of 4N femur/tibia boundary candidates per sample "
        "(default 0; recon-1.7 and 1.8 were trained with 1024)",
    )
    p.add_argument(
        "--hard-far",
        type=float,
        default=0.0,
        help="share of the --n-hard candidates drawn up to 12 voxels off the boundaries (default 0)",
    )
    p.add_argument(
        "--p-drop-lat",
        type=float,
        default=0.25,
        help="probability a sample trains with its lateral film dropped, the AP-only mode (default 0.25)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=2e-3,
        help="peak learning rate of the warm-up + cosine schedule (default 2e-3; a warm start's decoder "
        "runs at half of it)",
    )
    p.add_argument("--no-class-weights", action="store_true", help="ablation: unweighted cross-entropy")
    p.add_argument("--no-adv", action="store_true", help="ablation: no adversarial loss")
    p.add_argument("--no-proj", action="store_true", help="ablation: no projection-consistency loss")
    p.add_argument("--ap-only", action="store_true", help="ablation: train (and use) the AP film only")
    p.add_argument("--no-export", action="store_true", help="skip the ONNX export")
    p.add_argument(
        "--canonical",
        action="store_true",
        help="train in the knee-canonical frame: each cube turned to the knee's axial rotation "
        "(appliance/recon/orientation.py)",
    )
    p.add_argument(
        "--canon-noise-deg",
        type=float,
        default=4.0,
        help="with --canonical: spread (deg) added to the measured rotation, the runtime estimate's error",
    )
    p.add_argument(
        "--calib-data",
        type=Path,
        default=None,
        help="held-out anatomies (recon_<seed>_<pose>.npz, not training seeds) for the label-logit "
        "calibration written into the exported decoder",
    )
    p.set_defaults(func=run_train)
    c = tsub.add_parser(
        "recon-calibrate",
        help="fit the reconstruction decoder's label-logit offsets on held-out anatomies",
        description=(
            "Run the decoder of --models-dir (ONNX, as at runtime) on every voxel of each sample in --data, "
            "fit per-bone logit offsets (biplanar and AP only) for the best mean Dice, and write them into "
            "recon_decoder.onnx's metadata with recon_calibration.json. Samples whose seed is in "
            "--train-report's training set are refused."
        ),
    )
    c.add_argument("--models-dir", type=Path, required=True)
    c.add_argument("--data", type=Path, required=True, help="folder of recon_<seed>_<pose>.npz samples")
    c.add_argument("--train-report", type=Path, default=None, help="train_report.json of the model")
    c.add_argument("--max-cases", type=int, default=None)
    c.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    c.add_argument(
        "--stride", type=int, default=1, help="decode every N-th voxel per axis (default 1: every voxel)"
    )
    c.set_defaults(func=run_calibrate)
    o = tsub.add_parser(
        "recon-orient",
        help="train the orientation model (the knee's axial rotation from the films) for knee-canonical "
        "reconstruction",
        description=(
            "Train export/recon/orient.py's CNN on the reconstruction samples in --data (training seeds "
            "only; target: the truth labels' plateau angle minus the AP film's turn), report its errors on "
            "each --eval-data folder (held-out seeds) and write recon_orient.onnx into --models-dir "
            "(default: --out)."
        ),
    )
    o.add_argument("--data", type=Path, required=True, help="folder of recon_<seed>_<pose>.npz samples")
    o.add_argument("--out", type=Path, required=True)
    o.add_argument("--seed", type=int, required=True)
    o.add_argument("--epochs", type=int, default=40)
    o.add_argument("--width", type=int, default=16)
    o.add_argument("--threads", type=int, default=1)
    o.add_argument("--models-dir", type=Path, default=None)
    o.add_argument("--eval-data", type=Path, action="append", default=[], help="held-out sample folder")
    o.set_defaults(func=run_orient)


def run_orient(args: argparse.Namespace) -> int:
    import torch

    from export.recon.orient import OrientConfig, evaluate_orient, export_orient, save_report, train_orient

    _progress_to_stderr()
    cfg = OrientConfig(
        data=args.data,
        out=args.out,
        seed=int(args.seed),
        epochs=int(args.epochs),
        width=int(args.width),
        threads=int(args.threads),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    net, report = train_orient(cfg)
    torch.save({"net": net.state_dict(), "width": cfg.width, "report": report}, args.out / "orient.pt")
    train_seeds = set(report["train_seeds"])
    report["held_out"] = [evaluate_orient(net, d, train_seeds) for d in args.eval_data]
    path, parity = export_orient(net, args.models_dir or args.out, cfg.seed)
    report["onnx"] = str(path)
    report["parity_max_abs_diff_deg"] = parity
    save_report(report, args.out / "orient_report.json")
    _say(f"trained in {report['seconds']:.0f} s; fit on training samples {report['train_fit']}")
    for h in report["held_out"]:
        base = h["constant_guess_mae_deg"]
        _say(f"held out {h['data']}: MAE {h['mae_deg']:.2f} deg (constant guess {base:.2f})")
    _say(f"ONNX {path} (parity {parity:.1e} deg), report {args.out / 'orient_report.json'}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from export.recon.data import TRAIN_SEEDS, generate
    from export.recon.train import TrainConfig, train_recon

    if args.minutes <= 0:
        raise InputError("--minutes must be positive", reason="bad_argument")
    for flag, share in (("--p-drop-lat", args.p_drop_lat), ("--hard-far", args.hard_far)):
        if not 0.0 <= share <= 1.0:
            raise InputError(f"{flag} must lie in [0, 1], got {share}", reason="bad_argument")
    if args.fine_film < 0 or (args.fine_film and args.learned <= 0):
        raise InputError(
            "--fine-film needs --learned > 0 and a non-negative channel count", reason="bad_argument"
        )
    if not 0.0 < args.lr <= 0.1:
        raise InputError(f"--lr must lie in (0, 0.1], got {args.lr}", reason="bad_argument")
    _progress_to_stderr()
    data = args.data
    if data is None:
        first = int(args.first_seed)
        last = first + int(args.anatomies) - 1
        if first < TRAIN_SEEDS[0] or last > TRAIN_SEEDS[1]:
            raise InputError(f"training seeds must lie in {TRAIN_SEEDS}", reason="seed_range")
        data = args.out / "data"
        _say(f"generating {args.anatomies} anatomies x {args.poses} poses into {data}")
        generate(range(first, last + 1), data, int(args.poses))
    cfg = TrainConfig(
        data=data,
        out=args.out,
        seed=int(args.seed),
        minutes=float(args.minutes),
        steps=args.steps,
        models_dir=args.models_dir,
        max_samples=args.max_samples,
        threads=int(args.threads),
        no_adv=bool(args.no_adv),
        no_proj=bool(args.no_proj),
        ap_only=bool(args.ap_only),
        export=not args.no_export,
        rescan_steps=int(args.rescan_steps),
        hidden=int(args.hidden),
        learned=int(args.learned),
        fine_film=int(args.fine_film),
        context=int(args.context),
        context_grid=int(args.context_grid),
        init_from=args.init_from,
        n_small=int(args.n_small),
        n_bone=int(args.n_bone),
        n_hard=int(args.n_hard),
        hard_far=float(args.hard_far),
        p_drop_lat=float(args.p_drop_lat),
        lr=float(args.lr),
        class_weights=not args.no_class_weights,
        calib_data=args.calib_data,
        canonical=bool(args.canonical),
        canon_noise_deg=float(args.canon_noise_deg),
    )
    res = train_recon(cfg)
    _say(
        f"trained {res.steps} steps in {res.seconds:.0f} s on {len(res.train_seeds)} anatomies "
        f"(seeds {min(res.train_seeds)}-{max(res.train_seeds)}); final {json.dumps(res.final)}"
    )
    if res.onnx:
        _say(f"ONNX: {', '.join(str(p) for p in res.onnx)}; parity {res.parity}")
    _say(f"loss curve {res.loss_plot}, checkpoint {res.checkpoint}, report {res.report}")
    return 0


def train_seeds_of(report: Path) -> list[int]:
    """Anatomy seeds of a train_report.json (its sample file names)."""
    from export.recon.dataset import sample_seed

    try:
        doc = json.loads(report.read_text())
        return sorted({sample_seed(Path(n))[0] for n in doc["sample_files"]})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"cannot read training seeds from {report}: {e}", reason="bad_argument") from e


def run_calibrate(args: argparse.Namespace) -> int:
    from export.recon.calibrate import calibrate

    _progress_to_stderr()
    seeds = train_seeds_of(args.train_report) if args.train_report is not None else []
    if args.train_report is None:
        _say("no --train-report: calibration seeds are not checked against the training set")
    cal = calibrate(
        args.models_dir,
        args.data,
        train_seeds=seeds,
        max_cases=args.max_cases,
        threads=int(args.threads),
        stride=int(args.stride),
    )
    _say(f"label offsets {json.dumps(cal.offsets)}")
    _say(f"mean Dice (femur, tibia, fibula, patella) before {cal.dice_before}, after {cal.dice_after}")
    _say(f"report {cal.report}")
    return 0


def register_eval(esub: Any) -> None:
    p = esub.add_parser(
        "recon",
        help="reconstruction accuracy (PSNR, SSIM, Dice, ASSD, HD95, reprojection, timing) on eval seeds",
        description=(
            "Reconstruct every eval-range sample (recon_<seed>_<pose>.npz) or simulated case (case_<seed> "
            "with knee_ap.dcm, knee_lat.dcm and the knee CT) of --data through appliance.recon.infer "
            "(ONNX Runtime via engines) and compare with the simulator's truth. Training-range seeds are "
            "refused. --ablation adds rows for other model folders (name=DIR)."
        ),
    )
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--models-dir", type=Path, default=None, help=f"ONNX folder (default {REPO_MODELS})")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--max-cases", type=int, default=None)
    p.add_argument("--ap-only", action="store_true", help="also evaluate with the AP film alone")
    p.add_argument(
        "--uncalibrated", action="store_true", help="also evaluate with the label-logit offsets off"
    )
    p.add_argument(
        "--truth-orientation",
        action="store_true",
        help="knee-canonical models: also evaluate turned to the truth labels' rotation (oracle row)",
    )
    p.add_argument(
        "--ablation", action="append", default=[], metavar="NAME=DIR", help="extra model folder to compare"
    )
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all)")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from export.recon.evaluate import evaluate_all, format_summary

    ablations: dict[str, Path] = {}
    for item in args.ablation:
        name, sep, folder = str(item).partition("=")
        if not sep:
            raise InputError(f"--ablation needs NAME=DIR, got {item!r}", reason="bad_argument")
        ablations[name] = Path(folder)
    summary = evaluate_all(
        args.data,
        args.models_dir or REPO_MODELS,
        ablations=ablations,
        ap_only=bool(args.ap_only),
        uncalibrated=bool(args.uncalibrated),
        truth_orientation=bool(args.truth_orientation),
        max_cases=args.max_cases,
        threads=int(args.threads),
    )
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        sys.stdout.write(format_summary(summary) + "\n")
    return 0
