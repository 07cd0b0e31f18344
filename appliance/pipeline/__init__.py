"""The study pipeline: every film of one study -> the outbox folder of docs/study-outputs.md.

- :mod:`films`: one accepted film per view, copied into ``films/`` and described for result.json
- :mod:`optional`: stages that may be absent from a build (DICOM/PDF writers, reconstruction), imported
  lazily and called so that their absence or failure degrades the result with a flag, never the study
- :mod:`study`: :class:`~appliance.pipeline.study.StudyProcessor`, the processor the service runs
"""
