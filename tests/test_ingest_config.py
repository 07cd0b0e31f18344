"""The TOML configuration: defaults, overrides, and a specific reason for every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import DEFAULT_RULES, ConfigError, load_settings


def _write(tmp: Path, text: str) -> Path:
    path = tmp / "xr3d.toml"
    path.write_text(text, encoding="utf-8")
    return path


BASE = '[paths]\ninbox = "in"\noutbox = "out"\nstate = "state"\n'


def test_minimal_config_and_defaults(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, BASE))
    assert s.paths.inbox == (tmp_path / "in").resolve()
    assert s.paths.quarantine == (tmp_path / "state" / "quarantine").resolve()
    assert s.classify.rules == DEFAULT_RULES
    assert s.ingest.missing_spacing == "quarantine"
    assert s.jobs.expected_views == ("longleg_ap", "knee_ap", "knee_lat")


def test_cli_overrides_win(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, BASE), overrides={"inbox": tmp_path / "other", "outbox": None})
    assert s.paths.inbox == (tmp_path / "other").resolve()
    assert s.paths.outbox == (tmp_path / "out").resolve()


def test_full_config_parses(tmp_path: Path) -> None:
    text = BASE + (
        '[ingest]\nstable_seconds = 1\nmissing_spacing = "default"\ndefault_spacing_mm = 0.14\n'
        '[jobs]\nquiet_seconds = 30\nmax_attempts = 5\nworkers = 2\nexpected_views = ["longleg_ap"]\n'
        "[watch]\npolling = true\npoll_interval_seconds = 2\n"
        "[classify]\nimage_check = false\n"
        '[[classify.rules]]\nview = "knee_ap"\nmodality = ["cr"]\nmax_aspect = 1.5\n'
    )
    s = load_settings(_write(tmp_path, text))
    assert s.ingest.stable_seconds == 1.0 and s.ingest.default_spacing_mm == 0.14
    assert (s.jobs.workers, s.jobs.max_attempts, s.jobs.expected_views) == (2, 5, ("longleg_ap",))
    assert s.watch.polling and not s.classify.image_check
    assert len(s.classify.rules) == 1 and s.classify.rules[0].modality == ("CR",)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (BASE + "[ingest\n", "config_syntax"),
        (BASE + "[ingest]\nstable_secs = 2\n", "config_unknown_key"),
        (BASE + "[mystery]\n", "config_unknown_key"),
        ('[paths]\ninbox = "in"\noutbox = "out"\n', "config_missing_key"),
        (BASE + '[ingest]\nstable_seconds = "soon"\n', "config_bad_type"),
        (BASE + "[ingest]\nstable_seconds = -1\n", "config_bad_value"),
        (BASE + '[ingest]\nmissing_spacing = "guess"\n', "config_bad_value"),
        (BASE + "[jobs]\nworkers = 0\n", "config_bad_value"),
        (BASE + "[jobs]\nworkers = 1.5\n", "config_bad_type"),
        (BASE + '[jobs]\nexpected_views = ["skull"]\n', "config_bad_value"),
        (BASE + '[[classify.rules]]\nview = "chest"\n', "config_bad_value"),
        (BASE + '[[classify.rules]]\nview = "knee_ap"\ncolour = "red"\n', "config_unknown_key"),
        ('[paths]\ninbox = "x"\noutbox = "x"\nstate = "s"\n', "config_paths_overlap"),
        ('[paths]\ninbox = "s/in"\noutbox = "o"\nstate = "s"\n', "config_paths_overlap"),
    ],
)
def test_config_errors_name_the_problem(tmp_path: Path, text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text))
    assert info.value.reason == reason


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "absent.toml")
    assert info.value.reason == "config_not_found"


def test_cli_reports_config_errors(tmp_path: Path) -> None:
    from appliance.cli.main import main

    assert main(["watch", "--config", str(_write(tmp_path, "[ingest]\nstable_seconds = -1\n"))]) == 2
