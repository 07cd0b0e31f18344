"""Retention of ``state/store/``: the stored films of studies done long ago are deleted.

Intake keeps a copy of every accepted film in ``state/store/<sha256>.<ext>`` so that a study can run
again when another film arrives for it after it is done. Once a study has been ``done`` for longer
than the retention period its films are deleted from the store; the published outbox folder keeps its
own copy of each film it used (``films/<view>.dcm``, docs/study-outputs.md).

Only the files go: the ``instances`` rows stay, so a film sent again is still recognised as a
duplicate and does not re-open the study with that one film. A film that really is new for a pruned
study re-opens it as usual, and a run that needs a pruned film (the latest of another view) fails
(retried, then ``failed``; the published result stays as it was).

:func:`prune_store` is the whole rule. It opens its own connection to the job database (WAL mode, so
it runs beside the service's) and handles one study per short write transaction: a film arriving for
that study meanwhile waits for the commit, re-opens it afterwards, and can never race the deletion.
A file is deleted only if it lies in the store folder and no study that is not itself due refers to
it; a file already gone is counted, not an error. The service calls it at start and once a day
with ``[retention] store_days`` (default :data:`RETENTION_DAYS`; the service treats 0 as "off", while
``retention_days=0`` here means "every done study is due").
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

RETENTION_DAYS: Final = 30.0
_DAY_SECONDS: Final = 86_400.0


@dataclass(frozen=True)
class PruneResult:
    """What one :func:`prune_store` run did."""

    studies: int  # studies done for longer than the period
    deleted_files: int
    deleted_bytes: int
    already_gone: int  # recorded films no longer in the store (an earlier run, or removed by hand)
    kept_shared: int  # films also recorded for a study that is not due, left in place


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _companions(path: Path) -> tuple[Path, ...]:
    # The film itself and a sidecar an image input may have next to it.
    return (path, path.with_name(path.name + ".json"), path.with_suffix(".json"))


def prune_store(
    database: Path,
    store_dir: Path,
    now: float,
    *,
    retention_days: float = RETENTION_DAYS,
) -> PruneResult:
    """Delete the stored films of studies ``done`` for more than ``retention_days`` (module docstring).

    ``database`` is ``settings.paths.database``, ``store_dir`` ``settings.paths.store``, ``now`` a
    ``time.time()`` value. A study's "done since" is its last update, which finishing it sets.
    """
    if retention_days < 0:
        raise ValueError("retention_days must be >= 0")
    cutoff = now - retention_days * _DAY_SECONDS
    studies = deleted = size = gone = shared = 0
    db = sqlite3.connect(str(database), isolation_level=None, timeout=30.0)
    try:
        db.execute("PRAGMA busy_timeout = 30000")
        due = [
            uid
            for (uid,) in db.execute(
                "SELECT study_uid FROM studies WHERE state = 'done' AND updated <= ? ORDER BY updated",
                (cutoff,),
            )
        ]
        for uid in due:
            db.execute("BEGIN IMMEDIATE")
            try:
                # Re-checked under the write lock: a film may have re-opened the study since the list.
                row = db.execute(
                    "SELECT 1 FROM studies WHERE study_uid = ? AND state = 'done' AND updated <= ?",
                    (uid, cutoff),
                ).fetchone()
                paths = [] if row is None else _stored_paths(db, uid, cutoff)
                if row is not None:
                    studies += 1
                for raw, in_use in paths:
                    path = Path(raw)
                    if in_use:
                        shared += 1
                        continue
                    if not _inside(path, store_dir):
                        log.warning("store retention: a recorded film lies outside the store; left alone")
                        continue
                    found = False
                    for p in _companions(path):
                        try:
                            n = p.stat().st_size
                            p.unlink()
                        except FileNotFoundError:
                            continue
                        found = True
                        deleted += 1
                        size += n
                    gone += 0 if found else 1
            finally:
                db.execute("COMMIT")
    finally:
        db.close()
    result = PruneResult(studies, deleted, size, gone, shared)
    if deleted:
        log.info(
            "store retention (%g days): %d file(s), %.1f MB of %d study(ies) deleted",
            retention_days,
            deleted,
            size / 1e6,
            studies,
        )
    return result


def _stored_paths(db: sqlite3.Connection, study_uid: str, cutoff: float) -> list[tuple[str, bool]]:
    """The study's distinct stored paths, each with whether a study that is not due also uses it."""
    rows = db.execute(
        "SELECT DISTINCT i.stored_path, EXISTS ("
        "  SELECT 1 FROM instances j JOIN studies s ON s.study_uid = j.study_uid"
        "  WHERE j.stored_path = i.stored_path AND NOT (s.state = 'done' AND s.updated <= ?)"
        ") FROM instances i WHERE i.study_uid = ? ORDER BY i.stored_path",
        (cutoff, study_uid),
    ).fetchall()
    return [(str(p), bool(used)) for p, used in rows]
