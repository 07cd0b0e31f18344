"""Durable study jobs: the SQLite store, the intake of complete inbox files, running a processor and
publishing its outputs atomically, and the service loop that ties them to the watched inbox.

- :mod:`store`: :class:`JobStore` (SQLite, WAL), the state machine received -> queued -> running ->
  done | failed | quarantined
- :mod:`intake`: one complete inbox file -> stored instance, duplicate, or quarantine
- :mod:`processor`: the processor interface and the default ``ingested_only`` processor
- :mod:`runner`: running one study and publishing its outbox folder (temporary path, then rename)
- :mod:`service`: the loop behind ``xr3d watch``
"""
