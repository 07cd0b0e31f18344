"""Errors raised by the inference engines.

``engines`` sits below ``appliance`` (dependencies point gui -> appliance -> engines), so it cannot use
``appliance.errors``. The family mirrors it: every error carries a machine-readable ``reason`` code, and
``str(err)`` reads ``[reason] message`` like :class:`appliance.errors.Xr3dError`, so CLI glue and
quarantine records show the same text.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error ``engines`` raises on purpose."""

    reason: str = "engine_error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        return f"[{self.reason}] {super().__str__()}"


class EngineConfigError(EngineError):
    """An :class:`engines.config.EngineConfig` value is invalid."""

    reason = "bad_engine_config"


class ModelInputError(EngineError):
    """Feeds handed to a backend do not match the model's inputs (names, rank, shape, dtype)."""

    reason = "bad_model_input"


class ModelFileError(EngineError):
    """An ONNX or engine file is missing, unreadable or not a valid model."""

    reason = "bad_model_file"


class BackendUnavailableError(EngineError):
    """The requested backend cannot run on this machine (no GPU, no TensorRT, no provider...)."""

    reason = "backend_unavailable"


class EngineBuildError(EngineError):
    """TensorRT could not parse the ONNX or build an engine."""

    reason = "engine_build_failed"
