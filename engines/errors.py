"""The root of xr3d's exception family, and the errors raised by the inference engines.

``engines`` is the lowest layer (dependencies point gui -> appliance -> engines), so the family's root
lives here and :mod:`appliance.errors` builds on it: every error carries a machine-readable ``reason``
code and reads ``[reason] message``, so CLI output, logs and quarantine records name the same problem.
"""

from __future__ import annotations


class Xr3dError(Exception):
    """Base of every error xr3d raises on purpose."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        return f"[{self.reason}] {super().__str__()}"


class EngineError(Xr3dError):
    """Base of every error ``engines`` raises on purpose."""

    reason = "engine_error"


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
