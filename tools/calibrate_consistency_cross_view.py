"""Calibrate the cross-view check (appliance/recon/cross_view.py) on matched and mismatched AP/lateral pairs.

For every ordered pair (i, j) of the given held-out cases the knee AP film of case i is combined with the
knee lateral film of case j: i == j is a matched pair (good), i != j a mismatched one (bad). Unless
``--no-align``, the lateral film's recorded geometry is first moved rigidly by the difference of the two
cases' true knee centres (midpoint of FKC and TKC), so the other patient's knee sits exactly where this
patient's knee is: the hardest mismatch (a clinic's anonymised films are aligned on the joint line by
appliance.recon.frames, never better than that). Each pair is reconstructed by the shipped network (or
read from ``--cache``), scored by the re-projection check and by the cross-view check, and the tool
prints JSON: every row, the ROC AUC of both scores, the chosen threshold (the lowest one, rounded up to
0.01, at which at most ``--max-far`` (1 %) of the mismatched pairs pass: a mismatch presented as fact is
the worse error, a false reject only sends the study to review),
and the false-accept / false-reject rates of the cross-view score alone and of the whole verdict
(re-projection AND cross-view) at the chosen threshold and at the configured one.

    nice -n 5 .venv/bin/python -m tools.calibrate_consistency_cross_view CASE... --cache DIR --out F.json

Cases are ``xr3d simulate`` folders (DICOM films + truth.json) or compact ``recon_<seed>_0.npz`` samples
(export/recon/data.py: the two 256 px network frames and their geometries). Seeds must be evaluation seeds.
``--shard K/N`` computes only every N-th pair (to fill the cache in parallel); ``--region own`` takes each
film's bone region from its own matched reconstruction instead of the pair's (N instead of N^2 network
runs; an approximation, measured against the exact one in docs/recon-checks.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from appliance.dicomio.geometry_tags import read_geometry
from appliance.dicomio.nominal_geometry import align_joint_line, nominal_geometry
from appliance.geometry.projection import ProjectionGeometry
from appliance.geometry.volume import Volume
from appliance.ingest.dicom_reader import decode_pixels
from appliance.ingest.presentation import bone_bright_unit
from appliance.recon.consistency import ConsistencySettings, ViewImages, score_views
from appliance.recon.cross_view import cross_view_check
from appliance.recon.types import FilmView, Reconstruction
from tools.calibrate_consistency import roc_auc

VIEWS = ("knee_ap", "knee_lat")


def _film(path: Path, view: str, nominal_side: str | None = None) -> FilmView:
    ds = pydicom.dcmread(path)
    if nominal_side is not None:
        # A clinic's film: geometry rebuilt from the DX header, joint line at z = 0 (appliance.recon.frames).
        image = bone_bright_unit(ds, decode_pixels(ds))
        nom = nominal_geometry(ds, view, nominal_side)
        if nom is None:
            raise ValueError(f"{path}: header lacks SID or pitch")
        return FilmView(view, image, align_joint_line(nom.geometry, image)[0])
    geom = read_geometry(ds)
    if geom is None:
        raise ValueError(f"{path} records no projection geometry")
    return FilmView(view, bone_bright_unit(ds, decode_pixels(ds)), geom)


def _knee_centre(truth: dict[str, Any]) -> np.ndarray:
    lm = truth["landmarks_3d"]
    return 0.5 * (np.asarray(lm["FKC"], dtype=np.float64) + np.asarray(lm["TKC"], dtype=np.float64))


def _meta(truth: dict[str, Any]) -> dict[str, Any]:
    p = truth.get("params") or {}
    a = truth.get("angles_3d") or {}
    return {
        "side": truth.get("side"),
        "condylar_width_mm": p.get("condylar_width"),
        "rotation_deg": p.get("rotation"),
        "flexion_deg": p.get("flexion", a.get("knee_flexion_deg")),
    }


def load_pair_case(path: Path, nominal: bool = False) -> dict[str, Any]:
    """seed, films, true knee centre and a few descriptors of one held-out case."""
    path = Path(path)
    if path.suffix == ".npz":
        from appliance.recon.infer import film_frame

        d = np.load(path)
        truth = json.loads(str(d["truth_json"]))
        geo = json.loads(str(d["geometry_json"]))
        aff = np.asarray(d["affine"], dtype=np.float64)
        centre = aff[:3, :3] @ np.full(3, (d["hu"].shape[0] - 1) / 2.0) + aff[:3, 3]
        films = {}
        for k, v in enumerate(VIEWS):
            g: dict[str, Any] = {n: tuple(x) if isinstance(x, list) else x for n, x in geo[v].items()}
            g.pop("sid_mm", None)
            g.pop("matrix_3x4", None)
            geom = film_frame(
                np.zeros((g["rows"], g["columns"]), np.float32), ProjectionGeometry(**g), centre
            )
            films[v] = FilmView(v, np.asarray(d["films"][k], dtype=np.float32), geom.geometry)
        seed = int(d["seed"])
        meta = _meta(truth) | {"side": str(d["side"])}
    else:
        truth = json.loads((path / "truth.json").read_text())
        side = str(truth["side"])[:1].upper() if nominal else None
        films = {v: _film(path / f"{v}.dcm", v, side) for v in VIEWS}
        seed = int(truth["seed"])
        meta = _meta(truth)
    return {"seed": seed, "films": films, "knee_centre": _knee_centre(truth), "meta": meta}


def moved(film: FilmView, shift_mm: np.ndarray) -> FilmView:
    """The same film with its whole set-up (source and detector) translated by ``shift_mm``."""
    g = film.geometry
    s, o = np.asarray(g.source_mm) + shift_mm, np.asarray(g.detector_origin_mm) + shift_mm
    src = (float(s[0]), float(s[1]), float(s[2]))
    org = (float(o[0]), float(o[1]), float(o[2]))
    return FilmView(film.view, film.image, replace(g, source_mm=src, detector_origin_mm=org))


def pair_films(cases: list[dict[str, Any]], i: int, j: int, align: bool) -> dict[str, FilmView]:
    lat = cases[j]["films"]["knee_lat"]
    if i != j and align:
        lat = moved(lat, cases[i]["knee_centre"] - cases[j]["knee_centre"])
    return {"knee_ap": cases[i]["films"]["knee_ap"], "knee_lat": lat}


class Reconstructions:
    """Network reconstructions of pairs, cached as compressed npz (labels, HU int16, affine)."""

    def __init__(self, cache: Path | None) -> None:
        self.cache = cache
        self._net: Any = None

    def get(self, key: str, films: dict[str, FilmView]) -> Reconstruction:
        path = self.cache / f"rec_{key}.npz" if self.cache is not None else None
        if path is not None and path.exists():
            d = np.load(path)
            aff = np.asarray(d["aff"], dtype=np.float64)
            return Reconstruction(Volume(d["bihu"].astype(np.float32), aff), Volume(d["bi"], aff))
        if self._net is None:
            from appliance.recon import infer
            from engines.config import EngineConfig

            self._net = infer.Reconstructor(None, EngineConfig(cpu_threads=1))
        out = self._net.reconstruct({v: (f.image, f.geometry) for v, f in films.items()})
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(
                path, bi=out.labels.data, bihu=out.hu.data.astype(np.int16), aff=out.hu.affine
            )
        return Reconstruction(out.hu, out.labels)


def _centre(recon: Reconstruction) -> np.ndarray:
    return recon.volume.index_to_mm((np.array(recon.volume.shape, dtype=np.float64) - 1) / 2.0)[0]


def _regions(images: list[ViewImages]) -> list[tuple[str, np.ndarray, ProjectionGeometry]]:
    return [(vi.view, vi.region, vi.geometry) for vi in images]


def score_pair(
    cases: list[dict[str, Any]],
    i: int,
    j: int,
    recs: Reconstructions,
    align: bool,
    region: str,
    suffix: str = "",
) -> dict[str, Any]:
    films = pair_films(cases, i, j, align)
    key = f"{cases[i]['seed']}_{cases[j]['seed']}" + ("" if align or i == j else "_raw") + suffix
    reprojection: float | None = None
    per_view: dict[str, float] = {}
    if region == "own" and i != j:
        from appliance.recon.infer import estimate_centre

        # Each film's bone region from its own matched reconstruction (moved with the film); no
        # network run for the pair, so no re-projection score either.
        centre = estimate_centre({v: f.geometry for v, f in films.items()})
        regions = []
        for view, k in (("knee_ap", i), ("knee_lat", j)):
            rk = recs.get(f"{cases[k]['seed']}_{cases[k]['seed']}{suffix}", pair_films(cases, k, k, align))
            shift = cases[i]["knee_centre"] - cases[k]["knee_centre"] if align else np.zeros(3)
            aff = rk.volume.affine.copy()
            aff[:3, 3] += shift
            rk = Reconstruction(Volume(rk.volume.data, aff), Volume(rk.labels.data, aff))
            _, ims = score_views(rk, [films[view]])
            regions += _regions(ims)
    else:
        recon = recs.get(key, films)
        per_view, images = score_views(recon, list(films.values()))
        reprojection = min(per_view.values())
        regions = _regions(images)
        centre = _centre(recon)
    thr = ConsistencySettings().cross_view_threshold
    cv = cross_view_check(films, regions, centre, thr)
    mi, mj = cases[i]["meta"], cases[j]["meta"]
    wi, wj = mi.get("condylar_width_mm"), mj.get("condylar_width_mm")
    return {
        "ap_seed": cases[i]["seed"],
        "lat_seed": cases[j]["seed"],
        "good": i == j,
        "reprojection": reprojection,
        "per_view": per_view,
        "cross_view": None if cv is None else cv.score,
        "heights_used": None if cv is None else cv.heights_used,
        "same_side": mi.get("side") == mj.get("side"),
        "width_diff_mm": None if wi is None or wj is None else abs(float(wi) - float(wj)),
        "ap_meta": mi,
        "lat_meta": mj,
    }


def threshold_at_far(bad: list[float], max_far: float) -> float:
    """The lowest threshold (rounded up to 0.01) at which at most ``max_far`` of the bad pairs pass."""
    b = np.sort(np.asarray(bad, dtype=np.float64))[::-1]
    allowed = int(np.floor(max_far * len(b)))
    t = float(b[allowed]) + 1e-6 if allowed < len(b) else float(b[-1])
    return float(np.ceil(t * 100.0) / 100.0)


def rates(good: list[float], bad: list[float], t: float) -> dict[str, float]:
    return {
        "threshold": round(t, 4),
        "false_reject_rate": float(np.mean(np.asarray(good) < t)),
        "false_accept_rate": float(np.mean(np.asarray(bad) >= t)),
        "false_rejects": int(np.sum(np.asarray(good) < t)),
        "false_accepts": int(np.sum(np.asarray(bad) >= t)),
    }


def verdict_rates(rows: list[dict[str, Any]], t_cross: float) -> dict[str, Any]:
    """The whole verdict: re-projection >= its threshold AND cross-view >= ``t_cross``."""
    t_rep = ConsistencySettings().threshold
    rows = [r for r in rows if r["reprojection"] is not None]
    if not rows:
        return {"reprojection_threshold": t_rep, "note": "no re-projection scores (--region own)"}
    ok = [(r["good"], r["reprojection"] >= t_rep and r["cross_view"] >= t_cross) for r in rows]
    good = [passed for g, passed in ok if g]
    bad = [passed for g, passed in ok if not g]
    return {
        "reprojection_threshold": t_rep,
        "cross_view_threshold": round(t_cross, 4),
        "false_reject_rate": float(1.0 - np.mean(good)),
        "false_accept_rate": float(np.mean(bad)),
    }


def summary(rows: list[dict[str, Any]], threshold: float | None, max_far: float) -> dict[str, Any]:
    rows = [r for r in rows if r["cross_view"] is not None]
    good = [float(r["cross_view"]) for r in rows if r["good"]]
    bad = [float(r["cross_view"]) for r in rows if not r["good"]]
    rep_good = [float(r["reprojection"]) for r in rows if r["good"] and r["reprojection"] is not None]
    rep_bad = [float(r["reprojection"]) for r in rows if not r["good"] and r["reprojection"] is not None]
    chosen = threshold_at_far(bad, max_far) if threshold is None else threshold
    configured = ConsistencySettings().cross_view_threshold
    subsets = {
        "bad_same_side": [r for r in rows if not r["good"] and r["same_side"]],
        "bad_other_side": [r for r in rows if not r["good"] and not r["same_side"]],
        "bad_similar_size_3mm": [
            r for r in rows if not r["good"] and r["width_diff_mm"] is not None and r["width_diff_mm"] <= 3.0
        ],
    }
    return {
        "n_good": len(good),
        "n_bad": len(bad),
        "seeds": sorted({int(r["ap_seed"]) for r in rows}),
        "cross_view_auc": roc_auc(good, bad),
        "reprojection_auc": roc_auc(rep_good, rep_bad) if rep_good and rep_bad else None,
        "good_min": min(good),
        "good_median": float(np.median(good)),
        "bad_max": max(bad),
        "bad_median": float(np.median(bad)),
        "chosen_rule": f"lowest threshold passing at most {max_far:.1%} of the mismatched pairs, up to 0.01"
        if threshold is None
        else "given",
        "chosen": rates(good, bad, chosen),
        "configured": rates(good, bad, configured),
        "verdict_at_configured": verdict_rates(rows, configured),
        "reprojection_alone_at_its_threshold": rates(rep_good, rep_bad, ConsistencySettings().threshold)
        if rep_good and rep_bad
        else None,
        "subsets": {
            name: {
                "n": len(sub),
                "auc_vs_good": roc_auc(good, [float(r["cross_view"]) for r in sub]) if sub else None,
                "false_accepts_at_configured": sum(float(r["cross_view"]) >= configured for r in sub),
            }
            for name, sub in subsets.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="+", type=Path, help="xr3d simulate case folders or recon_<seed>_0.npz")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--cache", type=Path, help="folder for the pair reconstructions (reused when present)")
    ap.add_argument("--no-align", action="store_true", help="keep the lateral film's own recorded geometry")
    ap.add_argument(
        "--nominal",
        action="store_true",
        help="clinic path: geometry from the DX header, joint lines aligned (implies --no-align)",
    )
    ap.add_argument("--region", choices=("pair", "own"), default="pair", help="bone region (see above)")
    ap.add_argument("--shard", default="0/1", help="K/N: only every N-th pair, starting at K")
    ap.add_argument("--threshold", type=float, help="report rates at this threshold instead of choosing one")
    ap.add_argument(
        "--max-far", type=float, default=0.01, help="false-accept rate the chosen threshold allows"
    )
    args = ap.parse_args(argv)
    cases = [load_pair_case(p, args.nominal) for p in args.cases]
    align = not (args.no_align or args.nominal)
    for c in cases:
        if not 500000 <= c["seed"] <= 899999:
            print(f"seed {c['seed']} is not an evaluation seed", file=sys.stderr)  # noqa: T201
            return 2
    k, n = (int(x) for x in args.shard.split("/"))
    recs = Reconstructions(args.cache)
    rows = []
    pairs = [(i, j) for i in range(len(cases)) for j in range(len(cases))]
    for idx, (i, j) in enumerate(pairs):
        if idx % n != k:
            continue
        row = score_pair(cases, i, j, recs, align, args.region, "_nom" if args.nominal else "")
        rows.append(row)
        print(  # noqa: T201
            f"{row['ap_seed']} {row['lat_seed']} good={row['good']} reproj={row['reprojection']} "
            f"cross={row['cross_view']}",
            file=sys.stderr,
            flush=True,
        )
    doc = {
        "aligned": "joint line (nominal geometry)" if args.nominal else align,
        "region": args.region,
        "summary": summary(rows, args.threshold, args.max_far) if n == 1 else None,
        "rows": rows,
    }
    text = json.dumps(doc, indent=1, default=float)
    if args.out:
        args.out.write_text(text)
    print(json.dumps(doc["summary"], indent=1))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
