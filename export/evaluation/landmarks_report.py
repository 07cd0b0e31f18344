"""Text report of a landmark evaluation (:class:`export.evaluation.landmarks_eval.EvalSummary`): the tables
``xr3d eval landmarks`` prints, one job kept apart from the evaluation itself."""

from __future__ import annotations

from typing import Any

from export.evaluation.landmarks_eval import EvalSummary

__all__ = ["format_summary"]


def format_summary(s: EvalSummary) -> str:
    """A plain-text table of the summary."""
    lines = [
        f"landmark evaluation: {len(s.seeds)} held-out cases (seeds {min(s.seeds)}-{max(s.seeds)}), "
        f"backend {s.backend}, models {s.model_versions}",
        "",
        f"{'landmark':<8} {'median mm':>10} {'p95 mm':>8} {'n':>4}",
    ]
    for n, st in s.landmark_error_mm.items():
        lines.append(f"{n:<8} {st['median']:>10.2f} {st['p95']:>8.2f} {st['n']:>4}")
    c = s.coarse_error_mm
    o = s.crop_only_error_mm
    lines.append(f"(stage 1 alone, all landmarks: median {c['median']:.2f} mm, p95 {c['p95']:.2f} mm)")
    lines.append(
        f"(stage 2 alone, crops centred within 10 mm of the truth: median {o['median']:.2f} mm, "
        f"p95 {o['p95']:.2f} mm)"
    )
    if s.crop_stage_error_mm:
        b = s.crop_stage_error_mm
        lines.append(
            f"(before the fine stage, crop-stage points: median {b['median']:.2f} mm, p95 {b['p95']:.2f} mm, "
            f"n {b['n']})"
        )
    if s.fine_only_error_mm:
        f3 = s.fine_only_error_mm
        lines.append(
            f"(fine stage alone on the landmarks it refines, patches centred within 3 mm of the truth, "
            f"against the film truth: median {f3['median']:.2f} mm, "
            f"p95 {f3['p95']:.2f} mm)"
        )
    lines += ["", f"{'angle':<8} {'MAE deg':>8} {'p95 deg':>8} {'max':>7} {'n':>4}"]
    for k, st in s.angle_error_deg.items():
        lines.append(f"{k:<8} {st['mae']:>8.2f} {st['p95']:>8.2f} {st['max']:>7.2f} {st['n']:>4}")
    cp = "n/a" if s.cpak_agreement is None else f"{100 * s.cpak_agreement:.1f} % of {s.cpak_n}"
    lines += [
        "",
        f"CPAK type agreement: {cp}",
        f"seconds per film: median {s.seconds['median']:.2f}, p95 {s.seconds['p95']:.2f}, "
        f"max {s.seconds['max']:.2f}",
    ]
    if s.unknown_side:
        u = s.unknown_side
        lines.append(
            f"without a side: picked leg is the case's leg in {100 * u['on_target']:.1f} % "
            f"(legs found: {u['legs_found']})"
        )
        lines.append(f"lowest median stage-1 confidence of a film: {u['min_stage1_median_confidence']:.3f}")
    if s.confidence_fit is not None:
        f = s.confidence_fit
        lines.append(
            f"low-confidence fit: threshold {f.threshold:.3f} flags {100 * f.sensitivity:.0f} % of the "
            f"{f.n_bad} landmarks with error > {f.error_mm:g} mm and {100 * f.flag_rate_good:.1f} % of the "
            f"other {f.n_good}"
        )
    for bone, st in s.mask_dice.items():
        lines.append(
            f"mask Dice {bone}: mean {st['mean']:.3f}, median {st['median']:.3f}, min {st['min']:.3f} "
            f"({st['n']} cases with label volumes)"
        )
    lines += ["", "issue 4 targets (truth.json's landmarks_2d):"]
    lines += _target_lines(s.targets)
    if s.film_truth:
        ft = s.film_truth
        a = ft["landmark_error_mm"]["all"]
        lines += [
            "",
            "against the film truth (truth.json's landmarks moved by the film's recorded stitching "
            "registration error):",
            f"  landmarks: median {a['median']:.2f} mm, p95 {a['p95']:.2f} mm"
            + (
                f" (crop-stage points: median {ft['crop_stage_error_mm']['median']:.2f} mm)"
                if ft["crop_stage_error_mm"]
                else ""
            ),
            "  "
            + ", ".join(f"{n} {st['median']:.2f}" for n, st in ft["landmark_error_mm"].items() if n != "all"),
            "  angles MAE: "
            + ", ".join(f"{k} {st['mae']:.2f}" for k, st in ft["angle_error_deg"].items())
            + (
                f"; CPAK {100 * ft['cpak_agreement']:.1f} % of {ft['cpak_n']}"
                f" ({100 * ft['cpak_agreement_or_borderline']:.1f} % with the named borderline types)"
                if ft["cpak_agreement"] is not None
                else ""
            ),
            "issue 4 targets (film truth):",
        ]
        lines += _target_lines(ft["targets"])
    return "\n".join(lines)


def _target_lines(targets: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for key, t in targets.items():
        got = t["measured"]
        shown = "n/a" if got is None else f"{got:.3f}"
        verdict = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        out.append(f"  {key:<26} target {t['target']:<6} measured {shown:<8} {verdict}")
    return out
