"""CT input: DICOM series -> Volume (LPS), NIfTI in and out, and the errors bad inputs raise."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DSfloat

from appliance.dicomio.ct_series import CT_IMAGE_STORAGE, read_ct_series
from appliance.dicomio.uids import uid_from
from appliance.errors import InputError
from appliance.geometry.volume import Volume
from export.simulator.ct_io import load_ct, save_nifti

try:
    from dicom_validate import dciodvfy_report
except ImportError:  # tests/ imported as a package
    from tests.dicom_validate import dciodvfy_report


@pytest.fixture(autouse=True)
def strict_pydicom() -> Iterator[None]:
    old = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
    config.settings.reading_validation_mode = config.RAISE
    config.settings.writing_validation_mode = config.RAISE
    yield
    config.settings.reading_validation_mode, config.settings.writing_validation_mode = old


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from angles in degrees about x, then y, then z."""
    a, b, c = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)


@dataclass
class Phantom:
    """A small oblique CT series with known geometry and HU, written slice by slice with pydicom."""

    rows: int = 24
    columns: int = 20
    slices: int = 12
    row_spacing: float = 0.7  # PixelSpacing[0]: distance between rows
    col_spacing: float = 0.8  # PixelSpacing[1]: distance between columns
    slice_spacing: float = 1.25
    angles: tuple[float, float, float] = (20.0, -15.0, 35.0)
    origin: tuple[float, float, float] = (-40.5, 12.25, 310.0)
    tilt: tuple[float, float] = (0.0, 0.0)  # in-plane shift per slice, in row/col mm (gantry tilt)
    series_key: str = "phantom"
    seed: int = 7
    hu: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.hu = rng.integers(-1000, 1500, size=(self.slices, self.rows, self.columns)).astype(np.float64)
        if self.slices >= 12:
            self.hu[3, 5, 13] = 3000.0  # marker A
            self.hu[9, 17, 2] = 2500.0  # marker B

    @property
    def row_dir(self) -> np.ndarray:
        return rotation(*self.angles)[:, 0]

    @property
    def col_dir(self) -> np.ndarray:
        return rotation(*self.angles)[:, 1]

    @property
    def normal(self) -> np.ndarray:
        return rotation(*self.angles)[:, 2]

    def position(self, k: int) -> np.ndarray:
        shift = k * (self.tilt[0] * self.col_dir + self.tilt[1] * self.row_dir)
        return np.asarray(self.origin) + k * self.slice_spacing * self.normal + shift

    def voxel_mm(self, col: int, row: int, k: int) -> np.ndarray:
        """Independent reference: the DICOM definition of a pixel centre's patient position."""
        return (
            self.position(k) + col * self.col_spacing * self.row_dir + row * self.row_spacing * self.col_dir
        )

    def slice_dataset(self, k: int) -> Dataset:
        # Rescale varies by slice so a reader that applies one slice's rescale to all is caught.
        slope = 1.0 if k % 3 else 2.0
        intercept = -1024.0 if k % 2 else -1000.0
        stored = np.rint((self.hu[k] - intercept) / slope)
        self.hu[k] = stored * slope + intercept
        d = Dataset()
        d.SpecificCharacterSet = "ISO_IR 100"
        d.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        d.SOPClassUID = CT_IMAGE_STORAGE
        d.SOPInstanceUID = uid_from(self.series_key, "slice", str(k))
        d.StudyDate = "20260110"
        d.StudyTime = "120000"
        d.AccessionNumber = ""
        d.Modality = "CT"
        d.Manufacturer = "xr3d tests"
        d.ReferringPhysicianName = ""
        d.PatientName = "Phantom^CT"
        d.PatientID = "PH001"
        d.PatientBirthDate = ""
        d.PatientSex = "O"
        d.KVP = ds(120)
        d.SliceThickness = ds(self.slice_spacing)
        d.StudyInstanceUID = uid_from("ct-study")
        d.SeriesInstanceUID = uid_from(self.series_key, "series")
        d.StudyID = "1"
        d.SeriesNumber = 2
        d.BodyPartExamined = "LEG"
        d.Laterality = "R"
        d.PatientPosition = "FFS"
        # Instance numbers run against the slice normal, as many scanners (head first) do.
        d.InstanceNumber = self.slices - k
        d.ImagePositionPatient = [ds(v) for v in self.position(k)]
        d.ImageOrientationPatient = [ds(v) for v in np.concatenate([self.row_dir, self.col_dir])]
        d.FrameOfReferenceUID = uid_from("ct-for")
        d.PositionReferenceIndicator = ""
        d.SamplesPerPixel = 1
        d.PhotometricInterpretation = "MONOCHROME2"
        d.Rows = self.rows
        d.Columns = self.columns
        d.PixelSpacing = [ds(self.row_spacing), ds(self.col_spacing)]
        d.BitsAllocated = 16
        d.BitsStored = 16
        d.HighBit = 15
        d.PixelRepresentation = 1
        d.RescaleIntercept = ds(intercept)
        d.RescaleSlope = ds(slope)
        d.RescaleType = "HU"
        d.AcquisitionNumber = 1
        d.PixelData = stored.astype("<i2").tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = d.SOPClassUID
        meta.MediaStorageSOPInstanceUID = d.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        d.file_meta = meta
        return d

    def write(self, directory: Path, skip: tuple[int, ...] = ()) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        # File names in an order unrelated to position, so sorting by name would be wrong.
        order = np.random.default_rng(self.seed).permutation(self.slices)
        for n, k in enumerate(order):
            if int(k) in skip:
                continue
            path = directory / f"{self.series_key}_{n:03d}.dcm"
            self.slice_dataset(int(k)).save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths


def test_synthetic_slices_are_valid_ct_and_round_trip(tmp_path: Path) -> None:
    phantom = Phantom()
    paths = phantom.write(tmp_path / "ct")
    report = dciodvfy_report(paths[0])
    assert report.errors == [], report.output
    back = pydicom.dcmread(paths[0])
    assert back.Modality == "CT" and back.pixel_array.shape == (phantom.rows, phantom.columns)


def test_oblique_series_maps_voxels_to_the_right_millimetres(tmp_path: Path) -> None:
    phantom = Phantom()
    phantom.write(tmp_path / "ct")
    vol = read_ct_series(tmp_path / "ct")
    assert vol.shape == (phantom.columns, phantom.rows, phantom.slices)
    assert vol.data.dtype == np.float32
    # Every voxel: data[i, j, k] is column i, row j of slice k, in HU after each slice's rescale.
    np.testing.assert_array_equal(vol.data, np.transpose(phantom.hu, (2, 1, 0)).astype(np.float32))
    assert vol.spacing_mm == pytest.approx((phantom.col_spacing, phantom.row_spacing, phantom.slice_spacing))
    for col, row, k in [(0, 0, 0), (13, 5, 3), (2, 17, 9), (19, 23, 11)]:
        np.testing.assert_allclose(
            vol.index_to_mm([col, row, k])[0], phantom.voxel_mm(col, row, k), atol=1e-4
        )
    # The markers are found where they were put, in millimetres.
    for hu, where in ((3000.0, (13, 5, 3)), (2500.0, (2, 17, 9))):
        ijk = np.argwhere(vol.data == hu)
        assert ijk.tolist() == [list(where)]
        np.testing.assert_allclose(vol.index_to_mm(ijk)[0], phantom.voxel_mm(*where), atol=1e-4)
        np.testing.assert_allclose(vol.mm_to_index(phantom.voxel_mm(*where))[0], where, atol=1e-6)
    # Right-handed: k runs along row x column.
    assert np.linalg.det(vol.affine[:3, :3]) > 0


def test_gantry_tilt_shear_is_kept_exactly(tmp_path: Path) -> None:
    phantom = Phantom(tilt=(0.3, 0.0), angles=(0.0, 0.0, 0.0), series_key="tilted")
    phantom.write(tmp_path / "ct")
    vol = read_ct_series(tmp_path / "ct")
    for k in (0, 5, 11):
        np.testing.assert_allclose(vol.index_to_mm([4, 7, k])[0], phantom.voxel_mm(4, 7, k), atol=1e-4)


def test_tilted_series_survives_nifti_through_the_sform(tmp_path: Path) -> None:
    phantom = Phantom(tilt=(0.0, -0.4), series_key="tilted-nifti")
    phantom.write(tmp_path / "ct")
    save_nifti(load_ct(tmp_path / "ct"), tmp_path / "ct.nii")
    back = load_ct(tmp_path / "ct.nii")
    for ijk in ((0, 0, 0), (13, 5, 3), (19, 23, 11)):
        np.testing.assert_allclose(back.index_to_mm([ijk])[0], phantom.voxel_mm(*ijk), atol=1e-3)


def test_missing_slice_is_a_gap(tmp_path: Path) -> None:
    Phantom().write(tmp_path / "ct", skip=(6,))
    with pytest.raises(InputError) as err:
        read_ct_series(tmp_path / "ct")
    assert err.value.reason == "ct_series_gaps"


def test_duplicate_position_is_reported(tmp_path: Path) -> None:
    phantom = Phantom()
    phantom.write(tmp_path / "ct")
    dup = phantom.slice_dataset(4)
    dup.SOPInstanceUID = uid_from("phantom", "duplicate")
    dup.file_meta.MediaStorageSOPInstanceUID = dup.SOPInstanceUID
    dup.save_as(tmp_path / "ct" / "dup.dcm", enforce_file_format=True)
    with pytest.raises(InputError) as err:
        read_ct_series(tmp_path / "ct")
    assert err.value.reason == "ct_duplicate_slices"


def test_multiple_series_need_a_choice(tmp_path: Path) -> None:
    first = Phantom(series_key="first")
    second = Phantom(series_key="second", slices=8, angles=(0.0, 0.0, 0.0), seed=3)
    first.write(tmp_path / "ct")
    second.write(tmp_path / "ct")
    with pytest.raises(InputError) as err:
        read_ct_series(tmp_path / "ct")
    assert err.value.reason == "ct_multiple_series"
    chosen = read_ct_series(tmp_path / "ct", series_uid=uid_from("second", "series"))
    assert chosen.shape == (second.columns, second.rows, 8)
    np.testing.assert_allclose(chosen.index_to_mm([1, 2, 3])[0], second.voxel_mm(1, 2, 3), atol=1e-4)
    with pytest.raises(InputError) as err:
        read_ct_series(tmp_path / "ct", series_uid="1.2.3.4")
    assert err.value.reason == "ct_series_not_found"


def test_inconsistent_orientation_is_rejected(tmp_path: Path) -> None:
    phantom = Phantom()
    paths = phantom.write(tmp_path / "ct")
    d = pydicom.dcmread(paths[0])
    d.ImageOrientationPatient = [ds(v) for v in (1, 0, 0, 0, 1, 0)]
    d.save_as(paths[0], enforce_file_format=True)
    with pytest.raises(InputError) as err:
        read_ct_series(tmp_path / "ct")
    assert err.value.reason == "ct_inconsistent_geometry"


def test_non_dicom_and_hidden_files_are_ignored(tmp_path: Path) -> None:
    phantom = Phantom()
    phantom.write(tmp_path / "ct")
    (tmp_path / "ct" / "README.txt").write_text("exported by a PACS\n")
    (tmp_path / "ct" / ".partial.dcm.tmp").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    vol = read_ct_series(tmp_path / "ct")
    assert vol.shape[2] == phantom.slices


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("missing_dir", "ct_not_found"),
        ("empty_dir", "ct_empty"),
        ("one_slice", "ct_too_few_slices"),
        ("truncated_pixels", "ct_pixel_data"),
        ("no_position", "ct_missing_attribute"),
        ("garbage_after_preamble", "ct_unreadable"),
    ],
)
def test_bad_series_raise_specific_reasons(tmp_path: Path, setup: str, reason: str) -> None:
    directory = tmp_path / "ct"
    if setup != "missing_dir":
        directory.mkdir()
    phantom = Phantom()
    if setup == "one_slice":
        phantom.slice_dataset(0).save_as(directory / "only.dcm", enforce_file_format=True)
    elif setup in ("truncated_pixels", "no_position", "garbage_after_preamble"):
        paths = phantom.write(directory)
        if setup == "truncated_pixels":
            raw = paths[2].read_bytes()
            paths[2].write_bytes(raw[: len(raw) - 100])
        elif setup == "no_position":
            d = pydicom.dcmread(paths[1])
            del d.ImagePositionPatient
            d.save_as(paths[1], enforce_file_format=True)
        else:
            paths[3].write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    with pytest.raises(InputError) as err:
        read_ct_series(directory)
    assert err.value.reason == reason


# --- NIfTI ---------------------------------------------------------------------------------------


def oblique_volume(dtype: type = np.float32) -> Volume:
    rng = np.random.default_rng(11)
    data = rng.normal(0.0, 400.0, size=(9, 7, 5)).astype(dtype)
    affine = np.eye(4)
    affine[:3, :3] = rotation(10.0, 25.0, -40.0) @ np.diag([0.6, 0.9, 2.0])
    affine[:3, 3] = (-120.0, 35.5, 870.25)
    return Volume(data=data, affine=affine)


@pytest.mark.parametrize("name", ["vol.nii", "vol.nii.gz"])
def test_nifti_round_trip_keeps_data_and_lps_geometry(tmp_path: Path, name: str) -> None:
    vol = oblique_volume()
    path = tmp_path / name
    save_nifti(vol, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary left behind
    back = load_ct(path)
    np.testing.assert_array_equal(back.data, vol.data)
    ijk = np.array([[0, 0, 0], [8, 6, 4], [3.5, 2.0, 1.25]])
    np.testing.assert_allclose(back.index_to_mm(ijk), vol.index_to_mm(ijk), atol=1e-3)

    # Independently of load_ct: the file stores RAS, i.e. x and y negated, with both codes set.
    img = nib.load(path)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    lps = vol.index_to_mm(ijk)
    ras = nib.affines.apply_affine(img.affine, ijk)
    np.testing.assert_allclose(ras, lps * np.array([-1.0, -1.0, 1.0]), atol=1e-3)
    qform_ras = nib.affines.apply_affine(img.get_qform(), ijk)
    np.testing.assert_allclose(qform_ras, ras, atol=1e-3)


def test_integer_nifti_rounds_and_clips(tmp_path: Path) -> None:
    vol = oblique_volume()
    data = np.array(vol.data)
    data[0, 0, 0] = -40000.0
    data[1, 0, 0] = 12.6
    path = tmp_path / "ct.nii.gz"
    save_nifti(Volume(data=data, affine=vol.affine), path, dtype=np.int16)
    assert nib.load(path).get_data_dtype() == np.int16
    back = load_ct(path)
    assert back.data.dtype == np.float32
    assert back.data[0, 0, 0] == -32768.0 and back.data[1, 0, 0] == 13.0
    np.testing.assert_array_equal(back.data, np.clip(np.rint(data), -32768, 32767))


def test_external_ras_nifti_is_converted_to_lps(tmp_path: Path) -> None:
    affine_ras = np.diag([0.5, 0.5, 1.0, 1.0])
    affine_ras[:3, 3] = (10.0, 20.0, 30.0)
    img = nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.int16), affine_ras)
    img.set_sform(affine_ras, code=1)
    nib.save(img, tmp_path / "ext.nii")
    vol = load_ct(tmp_path / "ext.nii")
    # RAS (10, 20, 30) is 10 mm right and 20 mm anterior: LPS (-10, -20, 30).
    np.testing.assert_allclose(vol.index_to_mm([0, 0, 0])[0], (-10.0, -20.0, 30.0))
    np.testing.assert_allclose(vol.index_to_mm([2, 0, 0])[0], (-11.0, -20.0, 30.0))


def test_dicom_series_and_its_nifti_agree(tmp_path: Path) -> None:
    phantom = Phantom()
    paths = phantom.write(tmp_path / "ct")
    from_dicom = load_ct(tmp_path / "ct")
    save_nifti(from_dicom, tmp_path / "ct.nii.gz")
    from_nifti = load_ct(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(from_nifti.data, from_dicom.data)
    ijk = np.array([[0, 0, 0], [13, 5, 3], [2, 17, 9], [19, 23, 11]])
    np.testing.assert_allclose(from_nifti.index_to_mm(ijk), from_dicom.index_to_mm(ijk), atol=1e-3)
    np.testing.assert_allclose(from_nifti.index_to_mm([[13, 5, 3]])[0], phantom.voxel_mm(13, 5, 3), atol=1e-3)
    # A single file of the series stands for the whole series.
    from_file = load_ct(paths[0])
    np.testing.assert_array_equal(from_file.data, from_dicom.data)


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("missing", "ct_not_found"),
        ("wrong_suffix", "ct_unsupported_format"),
        ("garbage", "nifti_unreadable"),
        ("truncated_gz", "nifti_truncated"),
        ("truncated_nii", "nifti_truncated"),
        ("four_d", "nifti_not_3d"),
        ("no_orientation", "nifti_no_orientation"),
    ],
)
def test_bad_nifti_raise_specific_reasons(tmp_path: Path, setup: str, reason: str) -> None:
    vol = oblique_volume()
    path = tmp_path / ("ct.nii.gz" if setup != "truncated_nii" else "ct.nii")
    if setup == "wrong_suffix":
        path = tmp_path / "ct.raw"
        path.write_bytes(b"\x00" * 1000)
    elif setup == "garbage":
        path.write_bytes(gzip.compress(b"not a nifti header" * 3))
    elif setup in ("truncated_gz", "truncated_nii"):
        save_nifti(vol, path)
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) * 2 // 3])
    elif setup == "four_d":
        img = nib.Nifti1Image(np.zeros((4, 4, 4, 2), dtype=np.float32), np.eye(4))
        img.set_sform(np.eye(4), code=1)
        nib.save(img, path)
    elif setup == "no_orientation":
        img = nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.float32), None)
        img.set_sform(None, code=0)
        img.set_qform(None, code=0)
        nib.save(img, path)
    with pytest.raises(InputError) as err:
        load_ct(path)
    assert err.value.reason == reason


def test_save_nifti_rejects_other_suffixes(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_nifti(oblique_volume(), tmp_path / "ct.mha")
