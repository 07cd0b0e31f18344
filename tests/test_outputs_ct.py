"""The reconstructed CT series: geometry from the LPS affine survives a round trip through the project's
own CT reader, pixels are HU, the series is DERIVED\\SECONDARY in the source study, dciodvfy is clean."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from appliance.dicomio.ct_series import read_ct_series
from appliance.errors import GeometryError, InputError
from appliance.geometry.volume import Volume
from appliance.outputs.ct_series_writer import ct_geometry, write_ct_series
from tests.dicom_validate import dciodvfy_errors, requires_dciodvfy
from tests.outputs_support import CREATED, source_film, strict_reading  # noqa: F401


def _volume(affine: np.ndarray, shape: tuple[int, int, int] = (18, 22, 7)) -> Volume:
    rng = np.random.default_rng(900001)
    data = rng.normal(0.0, 400.0, shape).astype(np.float32)
    data[3:9, 4:12, 2:5] = 1500.25  # a bright "bone" block, off-centre so a flip would show
    return Volume(data=data, affine=affine)


def _oblique_affine() -> np.ndarray:
    # Rotated 20 deg about z and 10 deg about x, anisotropic voxels, arbitrary origin.
    cz, sz = np.cos(np.radians(20)), np.sin(np.radians(20))
    cx, sx = np.cos(np.radians(10)), np.sin(np.radians(10))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    a = np.eye(4)
    a[:3, :3] = rz @ rx @ np.diag([0.9, 1.1, 1.5])
    a[:3, 3] = [-31.5, 12.25, 804.0]
    return a


@requires_dciodvfy
@pytest.mark.usefixtures("strict_reading")
@pytest.mark.parametrize(
    "affine", [np.diag([1.0, 1.0, 1.0, 1.0]), _oblique_affine()], ids=["identity", "oblique"]
)
def test_series_round_trips_through_the_ct_reader(tmp_path: Path, affine: np.ndarray) -> None:
    vol = _volume(affine)
    src = source_film()
    paths = write_ct_series(tmp_path / "ct", vol, [src], key="k", created=CREATED)
    assert [p.name for p in paths] == [f"IM_{k:04d}.dcm" for k in range(1, 8)]
    back = read_ct_series(tmp_path / "ct")
    assert back.shape == vol.shape
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(back.data, np.rint(vol.data))
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.FrameOfReferenceUID != src.get("FrameOfReferenceUID")
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)
    assert float(ds.SliceThickness) == pytest.approx(np.linalg.norm(affine[:3, 2]))
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in paths}
    assert len(uids) == len(paths)
    for p in (paths[0], paths[-1]):
        assert dciodvfy_errors(p) == []


def test_sheared_grids_and_bad_values_are_refused(tmp_path: Path) -> None:
    sheared = np.eye(4)
    sheared[0, 1] = 0.3  # the j axis leans towards i: not representable as CT rows/columns
    with pytest.raises(GeometryError):
        ct_geometry(_volume(sheared))
    vol = _volume(np.eye(4))
    vol.data[0, 0, 0] = np.nan
    with pytest.raises(InputError) as err:
        write_ct_series(tmp_path, vol, [source_film()], key="k")
    assert err.value.reason == "bad_volume"
    with pytest.raises(InputError) as err:
        write_ct_series(tmp_path, _volume(np.eye(4)), [], key="k")
    assert err.value.reason == "missing_source"


def test_out_of_range_values_are_clipped_not_wrapped(tmp_path: Path) -> None:
    vol = _volume(np.eye(4), shape=(4, 5, 2))
    vol.data[0, 0, 0] = 40000.0
    vol.data[1, 0, 0] = -40000.0
    write_ct_series(tmp_path, vol, [source_film()], key="k")
    back = read_ct_series(tmp_path)
    assert back.data[0, 0, 0] == 32767 and back.data[1, 0, 0] == -32768
