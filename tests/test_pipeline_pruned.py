"""A re-opened study whose older films retention pruned from the state store (appliance/jobs/retention.py)
reads them from its published outbox folder, only if the bytes are the same film; otherwise a clear
``film_pruned`` input error, never a crash or a silently different film."""

from __future__ import annotations

from pathlib import Path

import pytest
from service_films import StudyFactory, cached_template

from appliance.config import settings_from_mapping
from appliance.errors import InputError
from appliance.ingest.reader import read_film
from appliance.jobs.store import StoredInstance
from appliance.pipeline.films import copy_films


@pytest.fixture(scope="module")
def factory(request: pytest.FixtureRequest) -> StudyFactory:
    return StudyFactory(cached_template(request.config.cache.mkdir("xr3d_service_template")), tag="pruned")


def _stored(tmp_path: Path, factory: StudyFactory) -> StoredInstance:
    store = tmp_path / "store"
    store.mkdir()
    path = store / "knee_ap.dcm"
    path.write_bytes(factory.films(0, ("knee_ap",))["knee_ap"])
    over = {"inbox": tmp_path / "in", "outbox": tmp_path / "out", "state": tmp_path / "st"}
    settings = settings_from_mapping({}, base_dir=tmp_path, overrides=over)
    return StoredInstance(film=read_film(path, settings), stored_path=path)


def test_pruned_film_comes_from_the_published_copy(tmp_path: Path, factory: StudyFactory) -> None:
    inst = _stored(tmp_path, factory)
    published = tmp_path / "out" / "study"
    published.mkdir(parents=True)
    copy_films({"knee_ap": inst}, published)
    original = inst.stored_path.read_bytes()
    inst.stored_path.unlink()

    again = tmp_path / "out" / ".study.tmp"
    again.mkdir()
    films = copy_films({"knee_ap": inst}, again, published)
    assert (again / "films" / "knee_ap.dcm").read_bytes() == original
    assert films["knee_ap"].source == published / "films" / "knee_ap.dcm"


def test_pruned_film_without_identical_copy_is_an_error(tmp_path: Path, factory: StudyFactory) -> None:
    inst = _stored(tmp_path, factory)
    published = tmp_path / "out" / "study"
    published.mkdir(parents=True)
    copy_films({"knee_ap": inst}, published)
    inst.stored_path.unlink()
    target = tmp_path / "again"
    target.mkdir()
    with pytest.raises(InputError) as no_copy:
        copy_films({"knee_ap": inst}, target)
    assert no_copy.value.reason == "film_pruned"

    copy = published / "films" / "knee_ap.dcm"
    copy.write_bytes(copy.read_bytes()[:-16] + bytes(16))
    with pytest.raises(InputError) as changed:
        copy_films({"knee_ap": inst}, target, published)
    assert changed.value.reason == "film_pruned"
