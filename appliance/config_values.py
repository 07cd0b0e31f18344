"""Validation of single TOML values for :mod:`appliance.config`: each check returns the value typed or raises
:class:`ConfigError` with the reason the configuration's documentation lists (``config_unknown_key``,
``config_bad_type``, ``config_bad_value``)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

from appliance.errors import InputError


class ConfigError(InputError):
    """The configuration file is missing, malformed or inconsistent; ``reason`` names the problem."""

    reason = "config_invalid"


def check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown key(s) in [{where}]: {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})",
            reason="config_unknown_key",
        )


def number(value: Any, where: str, *, minimum: float = 0.0, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number, got {type(value).__name__}", reason="config_bad_type")
    if integer and not isinstance(value, int):
        raise ConfigError(f"{where} must be an integer", reason="config_bad_type")
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(
            f"{where} must be a finite number >= {minimum}, got {value}", reason="config_bad_value"
        )
    return float(value)


def strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings", reason="config_bad_type")
    return tuple(value)


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false", reason="config_bad_type")
    return value


def section(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    table = doc.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table", reason="config_bad_type")
    return table


def simple(cls: type[Any], table: Mapping[str, Any], where: str, skip: tuple[str, ...] = ()) -> Any:
    """Build a flat settings dataclass from a TOML table, typed by the defaults' types."""
    default = cls()
    names = {f.name for f in fields(cls)} - set(skip)
    check_keys(table, names | set(skip), where)
    values: dict[str, Any] = {}
    for name in names:
        if name not in table:
            continue
        raw, key = table[name], f"{where}.{name}"
        current = getattr(default, name)
        if isinstance(current, bool):
            values[name] = boolean(raw, key)
        elif isinstance(current, int):
            values[name] = int(number(raw, key, minimum=1, integer=True))
        elif isinstance(current, float):
            values[name] = number(raw, key)
        elif isinstance(current, tuple):
            values[name] = strings(raw, key)
        elif isinstance(current, str):
            if not isinstance(raw, str):
                raise ConfigError(f"{key} must be a string", reason="config_bad_type")
            values[name] = raw
    return replace(default, **values)


def ae_title(value: str, where: str) -> str:
    # DICOM PS3.5 AE VR: at most 16 characters of the default repertoire, no backslash or control
    # characters, and not only spaces (leading/trailing spaces are not significant).
    title = value.strip()
    if not title or len(value) > 16 or not all(" " <= c <= "~" and c != "\\" for c in value):
        raise ConfigError(
            f"{where} must be an AE title: 1-16 printable ASCII characters, no backslash, got {value!r}",
            reason="config_bad_value",
        )
    return title


def port(value: int, where: str) -> int:
    if not 1 <= value <= 65535:
        raise ConfigError(f"{where} must be a TCP port (1-65535), got {value}", reason="config_bad_value")
    return value


HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
