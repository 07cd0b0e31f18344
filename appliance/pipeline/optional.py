"""Stages a build may lack, imported when first needed and called by keyword.

The DICOM/PDF writers (``appliance.outputs``) and the knee reconstruction (``appliance.recon.study``)
are developed alongside this pipeline. Each is looked up by module and function name; a missing module
or function makes the stage ``unavailable`` (a flag in result.json, the study is still processed), and
an exception inside it makes the stage ``failed`` with its error text. Only an environment error (disk
full, read-only outbox) propagates, so the runner can keep the study and retry it later.

Arguments are passed by keyword from a pool of what the pipeline knows (see :func:`call_with`), so a
stage can take any subset of them; a required parameter outside the pool is reported as a mismatch
instead of crashing the study.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.errors import Xr3dError
from appliance.jobs.runner import ENVIRONMENT_ERRNOS

log = logging.getLogger(__name__)

AVAILABLE, UNAVAILABLE, FAILED, DONE, SKIPPED = "available", "unavailable", "failed", "done", "skipped"
UNAVAILABLE_REASONS = frozenset({"model_missing"})


@dataclass(frozen=True)
class StageOutcome:
    """What a stage did: ``status`` (done, unavailable, failed, skipped), a short text, its return value."""

    status: str
    detail: str = ""
    value: Any = None

    def to_json(self) -> dict[str, str]:
        return {"status": self.status, "detail": self.detail} if self.detail else {"status": self.status}


def find_function(module: str, names: Sequence[str]) -> tuple[Callable[..., Any] | None, str]:
    """The first of ``names`` that ``module`` defines, or (None, why not)."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        return None, f"{module} is not installed in this build ({exc.name} missing)"
    except Exception as exc:  # a broken optional module must not stop the pipeline
        log.warning("optional module %s failed to import: %s", module, type(exc).__name__)
        return None, f"{module} failed to import: {type(exc).__name__}: {exc}"
    for name in names:
        fn = getattr(mod, name, None)
        if callable(fn):
            return fn, ""
    return None, f"{module} has none of {', '.join(names)}"


def call_with(fn: Callable[..., Any], pool: Mapping[str, Any]) -> StageOutcome:
    """Call ``fn`` with the keyword arguments of ``pool`` it names (all of them for ``**kwargs``)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return StageOutcome(FAILED, f"cannot inspect {getattr(fn, '__name__', fn)!r}")
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        kwargs = dict(pool)
    else:
        kwargs = {p.name: pool[p.name] for p in params if p.name in pool}
    missing = [
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and p.name not in kwargs
    ]
    name = f"{fn.__module__}.{fn.__qualname__}"
    if missing:
        return StageOutcome(FAILED, f"{name} needs {', '.join(missing)}, which the pipeline does not provide")
    try:
        value = fn(**kwargs)
    except OSError as exc:
        if exc.errno in ENVIRONMENT_ERRNOS:
            raise
        log.warning("%s failed: %s", name, type(exc).__name__, exc_info=True)
        return StageOutcome(FAILED, f"{type(exc).__name__}: {exc}")
    except Xr3dError as exc:
        # Our own errors say what is wrong (e.g. [model_missing]): one line, no traceback per study.
        log.warning("%s did not run: [%s]", name, exc.reason)
        # Missing model files mean this build cannot run the stage: unavailable, like a missing module.
        return StageOutcome(UNAVAILABLE if exc.reason in UNAVAILABLE_REASONS else FAILED, str(exc))
    except Exception as exc:
        log.warning("%s failed: %s", name, type(exc).__name__, exc_info=True)
        return StageOutcome(FAILED, f"{type(exc).__name__}: {exc}")
    return StageOutcome(DONE, "", value)


def run_optional(module: str, names: Sequence[str], pool: Mapping[str, Any]) -> StageOutcome:
    fn, why = find_function(module, names)
    if fn is None:
        return StageOutcome(UNAVAILABLE, why)
    return call_with(fn, pool)
