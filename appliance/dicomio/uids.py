"""DICOM UIDs: deterministic ones derived from names, random ones for new objects.

Deterministic UIDs let the simulator regenerate a case from its seed and get byte-identical
identifiers, so a re-run overwrites instead of duplicating a study in a PACS. They live under the
"2.25." root (PS3.5 B.2: a UUID written as one decimal integer), which needs no registered org root.
"""

from __future__ import annotations

import hashlib
import re

from pydicom.uid import generate_uid

from appliance import __version__

UUID_ROOT = "2.25."
MAX_UID_LENGTH = 64
_UID_SYNTAX = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def uid_from(*parts: str) -> str:
    """A UID determined entirely by ``parts`` (same parts, same UID; any change, a new one).

    The parts are length-prefixed before hashing so that ``("ab", "c")`` and ``("a", "bc")`` differ.
    128 bits of SHA-256 keep the value within a UUID's range, so the UID is at most 44 characters.
    """
    if not parts:
        raise ValueError("uid_from needs at least one part")
    # A fixed namespace keeps our UIDs apart from any other tool hashing the same strings.
    h = hashlib.sha256(b"xr3d uid_from v1")
    for part in parts:
        raw = part.encode("utf-8")
        h.update(len(raw).to_bytes(8, "big"))
        h.update(raw)
    value = int.from_bytes(h.digest()[:16], "big")
    # 5 characters of root + at most 39 digits: always within the 64-character limit.
    return f"{UUID_ROOT}{value}"


def random_uid() -> str:
    """A fresh UID for an object that has no natural name (pydicom: 2.25. + a random UUID)."""
    return str(generate_uid(prefix=None))


def is_valid_uid(uid: str) -> bool:
    """True for a syntactically valid UID (digits and dots, no leading zeros, <= 64 chars)."""
    # Checked here rather than via pydicom's UID, which raises instead of answering when pydicom
    # runs in strict validation mode.
    return len(uid) <= MAX_UID_LENGTH and _UID_SYNTAX.match(uid) is not None


# Identifies this software in every file meta header it writes (PS3.7 D.3.3.2). Derived from the
# version so that each release names itself differently without a registry.
IMPLEMENTATION_CLASS_UID = uid_from("xr3d", "implementation-class-uid", __version__)
IMPLEMENTATION_VERSION_NAME = f"XR3D_{__version__}"[:16]
