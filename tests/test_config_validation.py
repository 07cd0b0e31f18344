"""Config validation: every invalid value is refused at start with its own reason and a message naming
the key; the documented example in docs/config.md is itself a valid config; `xr3d watch` exits 2 on a
bad one. Real TOML files, real parser.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import ConfigError, Settings, load_settings, settings_from_mapping

ROOT = Path(__file__).resolve().parents[1]
PATHS = {"inbox": "in", "outbox": "out", "state": "state"}


def _load(tmp: Path, text: str, paths: bool = True) -> Settings:
    cfg = tmp / "xr3d.toml"
    head = "[paths]\n" + "".join(f'{k} = "{v}"\n' for k, v in PATHS.items()) if paths else ""
    cfg.write_text(head + text, encoding="utf-8")
    return load_settings(cfg)


RECEIVER_ON = 'enabled = true\nallowed_calling_aets = ["CR1"]\nallowed_peers = ["10.0.0.0/24"]\n'
PACS_ON = 'enabled = true\nhost = "pacs.clinic.local"\ncalled_aet = "PACS"\n'

# (toml, reason, words the message must contain)
INVALID: list[tuple[str, str, str]] = [
    ("[paths\n", "config_syntax", "not valid TOML"),
    ("[recever]\n", "config_unknown_key", "recever"),
    ("[receiver]\nenable = true\n", "config_unknown_key", "enable"),
    ("[pacs]\nhostname = 'x'\n", "config_unknown_key", "hostname"),
    ("[receiver]\nenabled = 'yes'\n", "config_bad_type", "receiver.enabled"),
    ("[receiver]\nport = '104'\n", "config_bad_type", "receiver.port"),
    ("[receiver]\nport = 104.5\n", "config_bad_type", "receiver.port"),
    ("[receiver]\nport = 70000\n", "config_bad_value", "receiver.port"),
    ("[receiver]\nport = 0\n", "config_bad_value", "receiver.port"),
    ("[receiver]\nae_title = ''\n", "config_bad_value", "receiver.ae_title"),
    ("[receiver]\nae_title = 'ABCDEFGHIJKLMNOPQ'\n", "config_bad_value", "receiver.ae_title"),
    ("[receiver]\nae_title = 'A\\\\B'\n", "config_bad_value", "receiver.ae_title"),
    ("[receiver]\nae_title = 'XRÄY'\n", "config_bad_value", "receiver.ae_title"),
    ("[receiver]\nbind_address = 'clinic-box'\n", "config_bad_value", "receiver.bind_address"),
    ("[receiver]\nallowed_peers = ['10.0.0.300']\n", "config_bad_value", "receiver.allowed_peers[0]"),
    ("[receiver]\nallowed_peers = '10.0.0.1'\n", "config_bad_type", "receiver.allowed_peers"),
    (
        "[receiver]\nallowed_calling_aets = ['OK', '']\n",
        "config_bad_value",
        "receiver.allowed_calling_aets[1]",
    ),
    ("[receiver]\nmax_associations = 0\n", "config_bad_value", "receiver.max_associations"),
    ("[receiver]\nmax_associations = 65\n", "config_bad_value", "receiver.max_associations"),
    ("[receiver]\nnetwork_timeout_seconds = 0.0\n", "config_bad_value", "receiver.network_timeout_seconds"),
    (
        "[receiver]\nenabled = true\nallowed_peers = ['10.0.0.1']\n",
        "config_missing_key",
        "allowed_calling_aets",
    ),
    ("[receiver]\nenabled = true\nallowed_calling_aets = ['CR1']\n", "config_missing_key", "allowed_peers"),
    ("[pacs]\nenabled = true\ncalled_aet = 'PACS'\n", "config_missing_key", "pacs.host"),
    ("[pacs]\nenabled = true\nhost = '10.0.0.9'\n", "config_missing_key", "pacs.called_aet"),
    ("[pacs]\nenabled = true\nhost = 'pacs server'\ncalled_aet = 'P'\n", "config_bad_value", "pacs.host"),
    (
        "[pacs]\nenabled = true\nhost = 'p'\ncalled_aet = 'TOO_LONG_AE_TITLE'\n",
        "config_bad_value",
        "pacs.called_aet",
    ),
    ("[pacs]\ncalling_aet = '  '\n", "config_bad_value", "pacs.calling_aet"),
    ("[pacs]\nport = -1\n", "config_bad_value", "pacs.port"),
    ("[pacs]\nretry_seconds = 0.0\n", "config_bad_value", "pacs.retry_seconds"),
    ("[pacs]\nscan_seconds = nan\n", "config_bad_value", "pacs.scan_seconds"),
    ("[ingest]\nmax_file_mb = inf\n", "config_bad_value", "ingest.max_file_mb"),
    ("[ingest]\nmax_file_mb = 0.0\n", "config_bad_value", "ingest.max_file_mb"),
    ("[ingest]\ntemporary_suffixes = ['.tmp', '']\n", "config_bad_value", "temporary_suffixes"),
    ("[ingest]\nmissing_spacing = 'guess'\n", "config_bad_value", "ingest.missing_spacing"),
    ("[ingest]\ndefault_spacing_mm = 9.0\n", "config_bad_value", "ingest.default_spacing_mm"),
    ("[jobs]\nworkers = 0\n", "config_bad_value", "jobs.workers"),
    (
        "[jobs]\nbackoff_seconds = 60.0\nbackoff_max_seconds = 30.0\n",
        "config_bad_value",
        "backoff_max_seconds",
    ),
    ("[jobs]\nexpected_views = ['knee_pa']\n", "config_bad_value", "jobs.expected_views"),
    ("[watch]\ntick_seconds = 0.0\n", "config_bad_value", "tick_seconds"),
    ("[watch]\npolling = 1\n", "config_bad_type", "watch.polling"),
    (
        "[[classify.rules]]\nview = 'knee_ap'\nmin_aspect = 2.0\nmax_aspect = 1.0\n",
        "config_bad_value",
        "classify.rules[0].min_aspect",
    ),
    ("[[classify.rules]]\nview = 'knee_ap'\ncolour = 'x'\n", "config_unknown_key", "colour"),
    ("[watch]\nreconcile_seconds = true\n", "config_bad_type", "watch.reconcile_seconds"),
]


@pytest.mark.parametrize(("text", "reason", "words"), INVALID)
def test_each_invalid_value_has_its_specific_error(
    tmp_path: Path, text: str, reason: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert info.value.reason == reason
    assert words in str(info.value)


def test_missing_file_and_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "nope.toml")
    assert info.value.reason == "config_not_found"
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, "", paths=False)
    assert info.value.reason == "config_missing_key" and "paths.inbox" in str(info.value)


def test_valid_receiver_and_pacs_sections_are_read(tmp_path: Path) -> None:
    s = _load(
        tmp_path,
        "[receiver]\n" + RECEIVER_ON + "ae_title = ' XR3D '\nbind_address = '::'\nport = 4242\n"
        "[pacs]\n" + PACS_ON + "port = 11112\n",
    )
    assert s.receiver.enabled and s.receiver.port == 4242 and s.receiver.ae_title == "XR3D"
    assert s.receiver.allowed_calling_aets == ("CR1",) and s.receiver.allowed_peers == ("10.0.0.0/24",)
    assert s.pacs.enabled and (s.pacs.host, s.pacs.port, s.pacs.called_aet) == (
        "pacs.clinic.local",
        11112,
        "PACS",
    )
    off = _load(tmp_path, "")
    assert not off.receiver.enabled and not off.pacs.enabled  # both off by default


def _documented_example() -> str:
    text = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    match = re.search(r"```toml\n(.*?)```", text, re.S)
    assert match is not None
    return match.group(1)


def test_the_documented_example_is_a_valid_config_with_the_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "xr3d.toml"
    cfg.write_text(_documented_example(), encoding="utf-8")
    documented = load_settings(cfg)
    defaults = settings_from_mapping(
        {}, base_dir=tmp_path, overrides={k: documented.paths.__dict__[k] for k in PATHS}
    )
    # the example spells out the defaults: the docs and the code agree
    for section in ("ingest", "jobs", "watch", "receiver", "pacs", "classify"):
        assert getattr(documented, section) == getattr(defaults, section), section


def test_xr3d_watch_refuses_to_start_with_a_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "xr3d.toml"
    cfg.write_text("[receiver]\nenabled = true\nallowed_calling_aets = ['CR1']\n", encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance.cli.main",
            "watch",
            "--config",
            str(cfg),
            "--inbox",
            str(tmp_path / "i"),
            "--outbox",
            str(tmp_path / "o"),
            "--state",
            str(tmp_path / "s"),
            "--once",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "config_missing_key" in proc.stderr and "allowed_peers" in proc.stderr
    assert not (tmp_path / "i").exists()  # nothing was started
