"""The appliance's one configuration: a TOML file read into frozen dataclasses, validated at start.

Every problem raises :class:`ConfigError` with a specific ``reason``:

- ``config_not_found``: the file does not exist or cannot be read
- ``config_syntax``: not valid TOML
- ``config_unknown_key``: a key or section this version does not know (typos are errors, not ignored)
- ``config_missing_key``: a required key is absent (``paths.inbox``, ``paths.outbox``, ``paths.state``;
  the allow-lists of an enabled receiver, host and AE title of an enabled PACS sender)
- ``config_bad_type``: a value has the wrong type
- ``config_bad_value``: a value is out of range or names something that does not exist
- ``config_paths_overlap``: inbox, outbox, state and quarantine must be four distinct, non-nested folders

``[pipeline]`` says where the models are and which optional stages run; ``[retention]`` how long the
films of finished studies stay in ``state/store/``.

The view-classification rules live here too (``[[classify.rules]]``), so deciding what a film is happens
in data, not in code. docs/config.md documents every key; :data:`DEFAULT_RULES` are the shipped rules.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from appliance.config_values import (
    HOSTNAME,
    ConfigError,
    ae_title,
    boolean,
    check_keys,
    number,
    port,
    section,
    simple,
    strings,
)
from appliance.landmarks.confidence import LOW_CONFIDENCE
from appliance.landmarks.knee_confidence import KNEE_LOW_CONFIDENCE

VIEWS: tuple[str, ...] = ("longleg_ap", "knee_ap", "knee_lat")
MISSING_SPACING_POLICIES: tuple[str, ...] = ("quarantine", "default")

# The models folder shipped with the code: <repo>/models in a source tree; in an installed wheel the
# ONNX files are package data at <site-packages>/models (pyproject.toml), the same place relative to
# this file. appliance.landmarks.detector and appliance.recon.infer compute the same default.
SHIPPED_MODELS_DIR: Path = Path(__file__).resolve().parents[1] / "models"


@dataclass(frozen=True)
class ViewRule:
    """One declarative classification rule: a film is ``view`` if every given condition holds.

    Empty tuples and ``None`` bounds mean "any". Text comparisons are case-insensitive; the empty
    string in a list matches an absent or empty attribute. ``aspect`` is Rows / Columns; ``height_mm``
    is Rows x row spacing and fails when the spacing is unknown.
    """

    view: str
    modality: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    view_position: tuple[str, ...] = ()
    laterality: tuple[str, ...] = ()
    min_aspect: float | None = None
    max_aspect: float | None = None
    min_height_mm: float | None = None
    max_height_mm: float | None = None


_LOWER_LIMB_PARTS = ("LEG", "LOWER LIMB", "LOWERLIMB", "LOWER EXTREMITY", "LOWEREXTREMITY", "EXTREMITY", "")

DEFAULT_RULES: tuple[ViewRule, ...] = (
    ViewRule(
        view="longleg_ap",
        modality=("DX", "CR"),
        body_part=(*_LOWER_LIMB_PARTS, "HIP", "FEMUR", "TIBIA", "KNEE"),
        view_position=("AP", "PA", ""),
        min_aspect=2.0,
        min_height_mm=600.0,
    ),
    ViewRule(
        view="knee_ap",
        modality=("DX", "CR"),
        body_part=(*_LOWER_LIMB_PARTS, "KNEE", "TIBIA", "FEMUR"),
        view_position=("AP", "PA"),
        max_aspect=2.0,
    ),
    ViewRule(
        view="knee_lat",
        modality=("DX", "CR"),
        body_part=(*_LOWER_LIMB_PARTS, "KNEE", "TIBIA", "FEMUR"),
        view_position=("LL", "RL", "LAT", "LATERAL", "LLO", "RLO"),
        max_aspect=2.0,
    ),
)

DEFAULT_NOT_LOWER_LIMB: tuple[str, ...] = (
    "CHEST",
    "THORAX",
    "LUNG",
    "ABDOMEN",
    "SKULL",
    "HEAD",
    "NECK",
    "CSPINE",
    "TSPINE",
    "LSPINE",
    "SPINE",
    "PELVIS",
    "SHOULDER",
    "ARM",
    "ELBOW",
    "FOREARM",
    "HAND",
    "WRIST",
    "BREAST",
)


@dataclass(frozen=True)
class Paths:
    inbox: Path
    outbox: Path
    state: Path
    quarantine: Path

    @property
    def database(self) -> Path:
        return self.state / "jobs.sqlite3"

    @property
    def store(self) -> Path:
        """Accepted input files, named by content hash, kept until their study is done."""
        return self.state / "store"


@dataclass(frozen=True)
class IngestSettings:
    stable_seconds: float = 2.0
    """A file counts as complete when its size and mtime have not changed for this long (and it parses)."""
    incomplete_grace_seconds: float = 120.0
    """A stable but unparseable (truncated) file is re-tried this long before it is quarantined."""
    temporary_prefixes: tuple[str, ...] = (".",)
    temporary_suffixes: tuple[str, ...] = (".tmp", ".part", ".partial", ".filepart", ".crdownload")
    missing_spacing: str = "quarantine"
    """``quarantine`` or ``default`` (process with ``default_spacing_mm`` and flag the result)."""
    default_spacing_mm: float = 0.15
    correct_magnification: bool = True
    """ImagerPixelSpacing is divided by EstimatedRadiographicMagnificationFactor (or SID / SOD)."""
    max_file_mb: float = 512.0


@dataclass(frozen=True)
class ClassifySettings:
    rules: tuple[ViewRule, ...] = DEFAULT_RULES
    not_lower_limb_body_parts: tuple[str, ...] = DEFAULT_NOT_LOWER_LIMB
    not_lower_limb_keywords: tuple[str, ...] = ("CHEST", "THORAX", "LUNG", "ABDOMEN", "SKULL")
    """Words in StudyDescription / SeriesDescription / ProtocolName that mark a film as not a lower limb."""
    image_check: bool = True
    min_edge_anisotropy: float = 1.2
    """Lower-limb films are dominated by vertical edges (long bones, skin line); see docs/ingest.md."""


@dataclass(frozen=True)
class JobSettings:
    expected_views: tuple[str, ...] = VIEWS
    quiet_seconds: float = 120.0
    max_attempts: int = 3
    backoff_seconds: float = 30.0
    backoff_max_seconds: float = 900.0
    workers: int = 1


@dataclass(frozen=True)
class WatchSettings:
    polling: bool = False
    """Use watchdog's polling observer (network shares, where inotify sees nothing)."""
    poll_interval_seconds: float = 5.0
    reconcile_seconds: float = 60.0
    tick_seconds: float = 0.5


@dataclass(frozen=True)
class ReceiverSettings:
    """The optional DICOM C-STORE receiver (appliance/receiver); off by default."""

    enabled: bool = False
    ae_title: str = "XR3D"
    bind_address: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()
    """Calling AE titles allowed to associate; required (non-empty) when enabled."""
    allowed_peers: tuple[str, ...] = ()
    """Peer IP addresses or networks (CIDR) allowed to connect; required (non-empty) when enabled."""
    max_associations: int = 4
    network_timeout_seconds: float = 60.0


@dataclass(frozen=True)
class PacsSettings:
    """The optional sender of the outbox's DICOM objects to a PACS (C-STORE SCU); off by default."""

    enabled: bool = False
    host: str = ""
    port: int = 104
    called_aet: str = ""
    calling_aet: str = "XR3D"
    scan_seconds: float = 30.0
    """How often the outbox is checked for DICOM objects not yet sent."""
    retry_seconds: float = 300.0
    """After a failed send, the same object is tried again no sooner than this."""
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class PipelineSettings:
    """What the study pipeline runs (docs/study-outputs.md); a disabled stage is reported ``disabled``."""

    models_dir: Path = SHIPPED_MODELS_DIR
    """Folder with the ONNX models (landmarks_whole/crop.onnx, the reconstruction models if any)."""
    low_confidence: float = LOW_CONFIDENCE
    """A landmark whose confidence is below this is flagged ``low_confidence`` (needs review)."""
    knee_low_confidence: float = KNEE_LOW_CONFIDENCE
    """The same for the knee AP / lateral film landmarks (their own model, so their own threshold)."""
    reconstruction: bool = True
    report_pdf: bool = True
    dicom_outputs: bool = True


@dataclass(frozen=True)
class RetentionSettings:
    store_days: float = 30.0
    """Films of studies done longer than this are deleted from state/store/; 0 keeps them forever."""


@dataclass(frozen=True)
class Settings:
    paths: Paths
    ingest: IngestSettings = field(default_factory=IngestSettings)
    classify: ClassifySettings = field(default_factory=ClassifySettings)
    jobs: JobSettings = field(default_factory=JobSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    receiver: ReceiverSettings = field(default_factory=ReceiverSettings)
    pacs: PacsSettings = field(default_factory=PacsSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)


# --- parsing ---------------------------------------------------------------------------------------

_TOP_SECTIONS = (
    "paths",
    "ingest",
    "classify",
    "jobs",
    "watch",
    "receiver",
    "pacs",
    "pipeline",
    "retention",
)


def _rule(item: Any, index: int) -> ViewRule:
    where = f"classify.rules[{index}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be a table", reason="config_bad_type")
    check_keys(item, {f.name for f in fields(ViewRule)}, where)
    view = item.get("view")
    if view not in VIEWS:
        raise ConfigError(f"{where}.view must be one of {', '.join(VIEWS)}", reason="config_bad_value")
    kwargs: dict[str, Any] = {"view": view}
    for name in ("modality", "body_part", "view_position", "laterality"):
        if name in item:
            kwargs[name] = tuple(s.strip().upper() for s in strings(item[name], f"{where}.{name}"))
    for name in ("min_aspect", "max_aspect", "min_height_mm", "max_height_mm"):
        if name in item:
            kwargs[name] = number(item[name], f"{where}.{name}")
    for lo, hi in (("min_aspect", "max_aspect"), ("min_height_mm", "max_height_mm")):
        if lo in kwargs and hi in kwargs and kwargs[lo] > kwargs[hi]:
            raise ConfigError(
                f"{where}.{lo} is larger than {hi}: no film can match", reason="config_bad_value"
            )
    return ViewRule(**kwargs)


def _classify(table: Mapping[str, Any]) -> ClassifySettings:
    base: ClassifySettings = simple(ClassifySettings, table, "classify", skip=("rules",))
    if "rules" not in table:
        return base
    items = table["rules"]
    if not isinstance(items, list) or not items:
        raise ConfigError("classify.rules must be a non-empty array of tables", reason="config_bad_type")
    return replace(base, rules=tuple(_rule(item, i) for i, item in enumerate(items)))


def _paths(table: Mapping[str, Any], overrides: Mapping[str, Path | None], base: Path) -> Paths:
    check_keys(table, {"inbox", "outbox", "state", "quarantine"}, "paths")
    resolved: dict[str, Path] = {}
    for name in ("inbox", "outbox", "state", "quarantine"):
        value: Path | None = overrides.get(name)
        if value is None and name in table:
            if not isinstance(table[name], str) or not table[name]:
                raise ConfigError(f"paths.{name} must be a non-empty string", reason="config_bad_type")
            value = Path(table[name])
        if value is None:
            if name == "quarantine" and "state" in resolved:
                value = resolved["state"] / "quarantine"
            else:
                raise ConfigError(
                    f"paths.{name} is required (in the file or as --{name})", reason="config_missing_key"
                )
        resolved[name] = (value if value.is_absolute() else base / value).resolve()
    ordered = list(resolved.items())
    for i, (a_name, a) in enumerate(ordered):
        for b_name, b in ordered[i + 1 :]:
            if a == b or ((a in b.parents or b in a.parents) and {a_name, b_name} != {"state", "quarantine"}):
                raise ConfigError(
                    f"paths.{a_name} and paths.{b_name} must be distinct, non-nested folders",
                    reason="config_paths_overlap",
                )
    return Paths(**resolved)


def _receiver(table: Mapping[str, Any]) -> ReceiverSettings:
    r: ReceiverSettings = simple(ReceiverSettings, table, "receiver")
    ae = ae_title(r.ae_title, "receiver.ae_title")
    try:
        ipaddress.ip_address(r.bind_address)
    except ValueError as exc:
        raise ConfigError(
            f"receiver.bind_address must be an IP address (not a host name), got {r.bind_address!r}",
            reason="config_bad_value",
        ) from exc
    port(r.port, "receiver.port")
    callers = tuple(
        ae_title(t, f"receiver.allowed_calling_aets[{i}]") for i, t in enumerate(r.allowed_calling_aets)
    )
    for i, peer in enumerate(r.allowed_peers):
        try:
            ipaddress.ip_network(peer, strict=False)
        except ValueError as exc:
            raise ConfigError(
                f"receiver.allowed_peers[{i}] must be an IP address or network (CIDR), got {peer!r}",
                reason="config_bad_value",
            ) from exc
    if r.max_associations > 64:
        raise ConfigError("receiver.max_associations must be between 1 and 64", reason="config_bad_value")
    if r.network_timeout_seconds <= 0:
        raise ConfigError("receiver.network_timeout_seconds must be > 0", reason="config_bad_value")
    if r.enabled:
        # An open receiver would take films from anyone on the network: both lists are required.
        for name in ("allowed_calling_aets", "allowed_peers"):
            if not getattr(r, name):
                raise ConfigError(
                    f"receiver.{name} must list at least one entry when the receiver is enabled",
                    reason="config_missing_key",
                )
    return replace(r, ae_title=ae, allowed_calling_aets=callers)


def _pacs(table: Mapping[str, Any]) -> PacsSettings:
    p: PacsSettings = simple(PacsSettings, table, "pacs")
    calling = ae_title(p.calling_aet, "pacs.calling_aet")
    port(p.port, "pacs.port")
    for name in ("scan_seconds", "retry_seconds", "timeout_seconds"):
        if getattr(p, name) <= 0:
            raise ConfigError(f"pacs.{name} must be > 0", reason="config_bad_value")
    if not p.enabled:
        return replace(p, calling_aet=calling)
    if not p.host:
        raise ConfigError(
            "pacs.host is required when the PACS sender is enabled", reason="config_missing_key"
        )
    if not p.called_aet:
        raise ConfigError(
            "pacs.called_aet is required when the PACS sender is enabled", reason="config_missing_key"
        )
    try:
        ipaddress.ip_address(p.host)
    except ValueError:
        if not HOSTNAME.match(p.host):
            raise ConfigError(
                f"pacs.host must be an IP address or a host name, got {p.host!r}", reason="config_bad_value"
            ) from None
    called = ae_title(p.called_aet, "pacs.called_aet")
    return replace(p, calling_aet=calling, called_aet=called)


def _pipeline(table: Mapping[str, Any], base: Path) -> PipelineSettings:
    check_keys(table, {f.name for f in fields(PipelineSettings)}, "pipeline")
    values: dict[str, Any] = {}
    if "models_dir" in table:
        raw = table["models_dir"]
        if not isinstance(raw, str) or not raw:
            raise ConfigError("pipeline.models_dir must be a non-empty string", reason="config_bad_type")
        d = Path(raw)
        d = (d if d.is_absolute() else base / d).resolve()
        # Checked here so a typo stops the service at start, not at the first study.
        if not d.is_dir():
            raise ConfigError(
                f"pipeline.models_dir {str(d)!r} is not an existing folder", reason="config_bad_value"
            )
        values["models_dir"] = d
    for name in ("low_confidence", "knee_low_confidence"):
        if name in table:
            value = number(table[name], f"pipeline.{name}")
            if not 0.0 < value < 1.0:
                raise ConfigError(
                    f"pipeline.{name} must be between 0 and 1 (exclusive), got {value}",
                    reason="config_bad_value",
                )
            values[name] = value
    for name in ("reconstruction", "report_pdf", "dicom_outputs"):
        if name in table:
            values[name] = boolean(table[name], f"pipeline.{name}")
    return replace(PipelineSettings(), **values)


def _retention(table: Mapping[str, Any]) -> RetentionSettings:
    check_keys(table, {f.name for f in fields(RetentionSettings)}, "retention")
    if "store_days" not in table:
        return RetentionSettings()
    return RetentionSettings(store_days=number(table["store_days"], "retention.store_days"))


def settings_from_mapping(
    doc: Mapping[str, Any], *, base_dir: Path, overrides: Mapping[str, Path | None] | None = None
) -> Settings:
    """Validate a parsed TOML document (relative paths are relative to ``base_dir``)."""
    check_keys(doc, set(_TOP_SECTIONS), "top level")
    paths = _paths(section(doc, "paths"), overrides or {}, base_dir)
    ingest: IngestSettings = simple(IngestSettings, section(doc, "ingest"), "ingest")
    if ingest.missing_spacing not in MISSING_SPACING_POLICIES:
        raise ConfigError(
            f"ingest.missing_spacing must be one of {', '.join(MISSING_SPACING_POLICIES)}",
            reason="config_bad_value",
        )
    if ingest.default_spacing_mm <= 0 or ingest.default_spacing_mm > 5:
        raise ConfigError("ingest.default_spacing_mm must be in (0, 5] mm", reason="config_bad_value")
    jobs: JobSettings = simple(JobSettings, section(doc, "jobs"), "jobs")
    bad = sorted(set(jobs.expected_views) - set(VIEWS))
    if bad or not jobs.expected_views:
        raise ConfigError(
            f"jobs.expected_views must name views among {', '.join(VIEWS)} (bad: {', '.join(bad)})",
            reason="config_bad_value",
        )
    if jobs.workers > 16:
        raise ConfigError("jobs.workers must be between 1 and 16", reason="config_bad_value")
    if jobs.backoff_max_seconds < jobs.backoff_seconds:
        raise ConfigError(
            "jobs.backoff_max_seconds must be >= jobs.backoff_seconds", reason="config_bad_value"
        )
    if ingest.max_file_mb <= 0:
        raise ConfigError("ingest.max_file_mb must be > 0", reason="config_bad_value")
    for name in ("temporary_prefixes", "temporary_suffixes"):
        if "" in getattr(ingest, name):
            # "" would match every name: the service would never read a single file.
            raise ConfigError(f"ingest.{name} must not contain an empty string", reason="config_bad_value")
    watch: WatchSettings = simple(WatchSettings, section(doc, "watch"), "watch")
    if watch.tick_seconds <= 0 or watch.poll_interval_seconds <= 0:
        raise ConfigError(
            "watch.tick_seconds and poll_interval_seconds must be > 0", reason="config_bad_value"
        )
    classify = _classify(section(doc, "classify"))
    receiver = _receiver(section(doc, "receiver"))
    pacs = _pacs(section(doc, "pacs"))
    return Settings(
        paths=paths,
        ingest=ingest,
        classify=classify,
        jobs=jobs,
        watch=watch,
        receiver=receiver,
        pacs=pacs,
        pipeline=_pipeline(section(doc, "pipeline"), base_dir),
        retention=_retention(section(doc, "retention")),
    )


def load_settings(path: Path | None, *, overrides: Mapping[str, Path | None] | None = None) -> Settings:
    """Read and validate the TOML config at ``path`` (None: defaults, paths from ``overrides`` only)."""
    if path is None:
        return settings_from_mapping({}, base_dir=Path.cwd(), overrides=overrides)
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}", reason="config_not_found") from exc
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", reason="config_syntax") from exc
    return settings_from_mapping(doc, base_dir=path.parent.resolve(), overrides=overrides)
