"""DICOM input/output shared by the runtime and the simulator (pydicom + numpy only, never torch).

- :mod:`uids`: deterministic and random UIDs, the implementation class UID
- :mod:`dx_writer`: films as Digital X-Ray For Presentation objects
- :mod:`geometry_tags`: the projection geometry in a private header block
- :mod:`ct_series`: a CT series directory as a :class:`~appliance.geometry.volume.Volume` in LPS
"""
