"""Secondary Capture of the overlay: RGB 8-bit pixels identical to the PNG, joins the source study,
references the film, passes dciodvfy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import RLELossless

from appliance.errors import InputError
from appliance.outputs.secondary_capture import build_overlay_sc, load_rgb, write_overlay_sc
from tests.dicom_validate import dciodvfy_errors, requires_dciodvfy
from tests.outputs_support import CREATED, STUDY_DIR, source_film, strict_reading  # noqa: F401

OVERLAY = STUDY_DIR / "overlay.png"


@requires_dciodvfy
@pytest.mark.usefixtures("strict_reading")
def test_overlay_round_trips_and_joins_the_study(tmp_path: Path) -> None:
    src = source_film()
    path = write_overlay_sc(tmp_path / "sc.dcm", OVERLAY, src, key="k1", created=CREATED)
    ds = pydicom.dcmread(path)
    expected = np.asarray(Image.open(OVERLAY).convert("RGB"))
    assert ds.PhotometricInterpretation == "RGB" and ds.BitsAllocated == 8 and ds.SamplesPerPixel == 3
    assert np.array_equal(ds.pixel_array, expected)  # lossless
    assert ds.file_meta.TransferSyntaxUID == RLELossless and ds.LossyImageCompression == "00"
    assert path.stat().st_size < expected.nbytes / 2  # the overlay's flat areas compress
    assert ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert (ds.PatientName, ds.PatientID) == (src.PatientName, src.PatientID)
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert ds.ContentDate == "20260102"
    assert dciodvfy_errors(path) == []


def test_alpha_and_palette_pictures_become_rgb(tmp_path: Path) -> None:
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255  # one opaque red pixel on a transparent (-> white) background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rgb = load_rgb(tmp_path / "a.png")
    assert rgb.shape == (4, 5, 3)
    assert tuple(rgb[0, 0]) == (200, 0, 0)
    assert tuple(rgb[1, 1]) == (255, 255, 255)
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "p.png")
    assert load_rgb(tmp_path / "p.png").shape == (4, 5, 3)


def test_bad_inputs_raise_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(InputError) as err:
        build_overlay_sc(tmp_path / "x.png", source_film(), key="k")
    assert err.value.reason == "bad_picture"
    with pytest.raises(InputError) as err:
        build_overlay_sc(OVERLAY, None, key="k")  # type: ignore[arg-type]
    assert err.value.reason == "missing_source"
