"""Writes one rendered film the same way for phantom cases and CT cases: DICOM DX, PNG preview, and the
truth.json entry fields every film shares."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from appliance.dicomio.dx_writer import FilmInfo, Photometric, View, write_dx
from appliance.geometry.projection import ProjectionGeometry
from export.simulator.film_artifacts import FilmArtifacts
from export.simulator.physics import Film

FILM_NAMES = {"longleg": "longleg_ap", "knee-ap": "knee_ap", "knee-lat": "knee_lat"}
PHYS_KIND = {"longleg": "longleg", "knee-ap": "knee_ap", "knee-lat": "knee_lat"}
VIEW_INDEX = {"longleg": 0, "knee-ap": 1, "knee-lat": 2}


@dataclass(frozen=True)
class FilmIdentity:
    """Where a film belongs: its study, its own UIDs, and the synthetic patient it is filed under."""

    study_uid: str
    series_uid: str
    sop_uid: str
    series_number: int
    laterality: str  # "L" | "R"
    meta: dict[str, Any]
    series_description: str
    derived: bool = False
    derivation_description: str = ""


def preview(img01: NDArray[np.floating[Any]], path: Path, max_px: int) -> None:
    im = Image.fromarray(np.rint(np.clip(img01, 0, 1) * 255).astype(np.uint8))
    scale = max_px / max(im.size)
    if scale < 1:
        size = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
        im = im.resize(size, Image.Resampling.LANCZOS)
    im.save(path, optimize=True)


def write_film(
    folder: Path,
    name: str,
    film: Film,
    geom: ProjectionGeometry,
    art: FilmArtifacts,
    ident: FilmIdentity,
    *,
    magnification: float,
    preview_max_px: int,
) -> dict[str, Any]:
    """Write ``name.dcm`` and ``name.png`` into ``folder``; return the shared truth entry."""
    info = FilmInfo(
        study_uid=ident.study_uid,
        series_uid=ident.series_uid,
        sop_uid=ident.sop_uid,
        view=cast(View, name),
        laterality="L" if ident.laterality == "L" else "R",
        source_to_patient_mm=geom.source_to_detector_mm() / magnification,
        window_center=film.window_center,
        window_width=film.window_width,
        series_number=ident.series_number,
        instance_number=1,
        kvp=film.params.kvp,
        series_description=ident.series_description,
        burned_in_annotation=bool(art.texts or art.markers),
        derived=ident.derived,
        derivation_description=ident.derivation_description,
        **ident.meta,
    )
    write_dx(
        folder / f"{name}.dcm",
        film.pixels,
        bits_stored=film.bits_stored,
        photometric=cast(Photometric, film.photometric),
        geometry=geom,
        info=info,
    )
    preview(film.presentation, folder / f"{name}.png", preview_max_px)
    return {
        "file": f"{name}.dcm",
        "preview": f"{name}.png",
        "sop_instance_uid": ident.sop_uid,
        "series_instance_uid": ident.series_uid,
        "rows": int(film.pixels.shape[0]),
        "columns": int(film.pixels.shape[1]),
        "pixel_spacing_mm": [geom.pitch_v_mm, geom.pitch_u_mm],
        "magnification": magnification,
        "geometry": geom.to_dict(),
        "exposure": film.params.to_dict(),
        "artifacts": art.to_dict(),
        "photometric": film.photometric,
        "bits_stored": film.bits_stored,
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Atomic JSON write (temporary name, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)
