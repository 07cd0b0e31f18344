"""The optional DICOM receiver: a C-STORE SCP (pynetdicom) that drops received radiographs into the inbox.

Only configured peers get in: an association from a calling AE title not in
``receiver.allowed_calling_aets`` or from an address outside ``receiver.allowed_peers`` is rejected
(A-ASSOCIATE-RJ, permanent). Only the radiograph storage SOP classes (CR, DX for presentation, DX for
processing) and Verification (C-ECHO) are offered, in every transfer syntax the ingest may decode; the
ingest decides afterwards whether the film is usable, exactly as for a file copied into the inbox.

Every C-STORE is handled inside a guard: a dataset that cannot be parsed, does not match its request or
cannot be written is logged (without any of its values) and answered with a failure status, and the
server keeps serving. A received instance is written byte for byte as sent, to a hidden temporary file
in ``<inbox>/.receiving/``, fsynced, then renamed into ``<inbox>/received/``: the watcher never sees a
half-written file, and the rename is the "complete" signal it reacts to at once.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import secrets
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom.config
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from appliance.config import ReceiverSettings
from appliance.errors import Xr3dError

log = logging.getLogger(__name__)

RADIOGRAPH_SOP_CLASSES: tuple[str, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
VERIFICATION = "1.2.840.10008.1.1"  # C-ECHO, so a modality can test the connection
RECEIVED_FOLDER = "received"
TEMP_FOLDER = ".receiving"  # hidden: the inbox scan and watcher ignore it

# C-STORE statuses (DICOM PS3.4 B.2.3)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110

_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class ReceiverError(Xr3dError):
    """The receiver cannot start (address in use, not allowed to bind)."""

    reason = "receiver_failed"


class DatasetRejectedError(Exception):
    """A received dataset is not stored; ``status`` is the C-STORE failure status to answer."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def peer_allowed(address: str, allowed: Iterable[str]) -> bool:
    """True when the IP ``address`` lies in one of the ``allowed`` addresses or networks."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # an IPv4 client on a dual-stack socket
    return any(ip in ipaddress.ip_network(net, strict=False) for net in allowed)


def write_atomically(inbox: Path, data: bytes) -> Path:
    """Write ``data`` as a new file in ``<inbox>/received/`` via a hidden temporary and a rename.

    The name carries a UTC stamp and random digits only: never a UID or anything from the dataset.
    """
    tmp_dir, final_dir = inbox / TEMP_FOLDER, inbox / RECEIVED_FOLDER
    tmp_dir.mkdir(parents=True, exist_ok=True)
    final_dir.mkdir(parents=True, exist_ok=True)
    name = f"rx-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(6)}.dcm"
    tmp = tmp_dir / name
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        final = final_dir / name
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(final_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some file systems (network shares) cannot fsync a folder; the file is complete anyway
    return final


def check_dataset(
    ds: Dataset, request_sop_class: str, request_sop_instance: str, *, require_pixels: bool = True
) -> None:
    """Parse every element of ``ds`` and compare it with its C-STORE request; raises DatasetRejectedError."""
    try:
        for _ in ds.iterall():  # pydicom parses lazily: touch every element to find damage now
            pass
        sop_class = str(ds.get("SOPClassUID", ""))
        sop_instance = str(ds.get("SOPInstanceUID", ""))
    except Exception as exc:
        raise DatasetRejectedError(
            f"dataset cannot be parsed ({type(exc).__name__})", CANNOT_UNDERSTAND
        ) from exc
    if sop_class != request_sop_class:
        raise DatasetRejectedError("SOPClassUID differs from the request's", DOES_NOT_MATCH_SOP_CLASS)
    if not sop_instance or sop_instance != request_sop_instance:
        raise DatasetRejectedError("SOPInstanceUID missing or differs from the request's", CANNOT_UNDERSTAND)
    if require_pixels and "PixelData" not in ds:
        raise DatasetRejectedError("a radiograph without pixel data", DOES_NOT_MATCH_SOP_CLASS)


class DicomReceiver:
    """A C-STORE SCP bound to ``settings.bind_address:settings.port`` writing into ``inbox``.

    :meth:`start` returns once the socket listens (associations are served by pynetdicom's threads);
    :meth:`stop` closes it. ``sop_classes`` defaults to the radiograph classes; tests of the PACS sender
    use a receiver that takes other storage classes too.
    """

    def __init__(
        self,
        settings: ReceiverSettings,
        inbox: Path,
        *,
        sop_classes: tuple[str, ...] = RADIOGRAPH_SOP_CLASSES,
        require_pixels: bool = True,
    ) -> None:
        self.settings = settings
        self.inbox = inbox
        self._sop_classes = sop_classes
        self._require_pixels = require_pixels
        self._server: ThreadedAssociationServer | None = None
        self._lock = threading.Lock()
        self._stored = 0
        self._failed = 0

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the receiver is not running")
        return int(self._server.server_address[1])

    @property
    def counts(self) -> tuple[int, int]:
        """(instances stored, requests answered with a failure) since start."""
        with self._lock:
            return self._stored, self._failed

    def _build_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_associations = s.max_associations
        ae.network_timeout = s.network_timeout_seconds
        ae.acse_timeout = s.network_timeout_seconds
        ae.dimse_timeout = s.network_timeout_seconds
        ae.require_calling_aet = list(s.allowed_calling_aets)
        for sop_class in self._sop_classes:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        ae.add_supported_context(VERIFICATION)
        return ae

    def start(self) -> None:
        if self._server is not None:
            return
        # as in the service: pydicom's validation warnings would quote received values (patient data)
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        logging.getLogger("pydicom").setLevel(logging.ERROR)
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_store),
        ]
        address = (self.settings.bind_address, self.settings.port)
        try:
            self._server = self._build_ae().start_server(address, block=False, evt_handlers=handlers)
        except OSError as exc:
            raise ReceiverError(
                f"DICOM receiver cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}"
            ) from exc
        log.info(
            "DICOM receiver %s listening on %s:%d (callers: %s)",
            self.settings.ae_title,
            self.settings.bind_address,
            self.port,
            ", ".join(self.settings.allowed_calling_aets),
        )

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            log.info("DICOM receiver stopped")

    def __enter__(self) -> DicomReceiver:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- handlers (run on pynetdicom's association threads) ---------------------------------------

    def _on_requested(self, event: Event) -> None:
        try:
            address = event.assoc.requestor.address
        except Exception:
            address = ""
        if not peer_allowed(address, self.settings.allowed_peers):
            log.warning("rejected an association from %s: address not in receiver.allowed_peers", address)
            # permanent rejection by the service user, no reason given (PS3.8 9.3.4)
            event.assoc.acse.send_reject(0x01, 0x01, 0x01)
            event.assoc.kill()  # as pynetdicom's own rejections do: lets the DUL send the PDU, then ends

    def _on_store(self, event: Event) -> int:
        """The guard around one C-STORE: whatever happens, answer a status and keep serving."""
        try:
            status = self._store(event)
        except DatasetRejectedError as exc:
            log.warning("refused a received instance: %s (status 0x%04X)", exc, exc.status)
            status = exc.status
        except OSError as exc:
            if exc.errno in _ENVIRONMENT_ERRNOS:
                log.error("cannot write a received instance into the inbox: %s", exc.strerror)
                status = OUT_OF_RESOURCES
            else:
                log.exception("unexpected error storing a received instance")
                status = PROCESSING_FAILURE
        except Exception:
            log.exception("unexpected error storing a received instance")
            status = PROCESSING_FAILURE
        with self._lock:
            if status == SUCCESS:
                self._stored += 1
            else:
                self._failed += 1
        return status

    def _store(self, event: Event) -> int:
        request = event.request
        if not isinstance(request, C_STORE):
            raise DatasetRejectedError("not a C-STORE request", PROCESSING_FAILURE)
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
        except Exception as exc:
            raise DatasetRejectedError(
                f"dataset cannot be decoded ({type(exc).__name__})", CANNOT_UNDERSTAND
            ) from exc
        req_class = str(request.AffectedSOPClassUID or "")
        req_instance = str(request.AffectedSOPInstanceUID or "")
        check_dataset(ds, req_class, req_instance, require_pixels=self._require_pixels)
        data = event.encoded_dataset(include_meta=True)
        path = write_atomically(self.inbox, data)
        log.info(
            "received an instance from %s (%s), %d bytes -> %s",
            event.assoc.requestor.ae_title,
            event.assoc.requestor.address,
            len(data),
            path.name,
        )
        return SUCCESS
