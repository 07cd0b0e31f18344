"""xr3d appliance: the runtime on the clinic box (ingest, jobs, pipeline, analytics, DICOM I/O, CLI).

Never imports torch, export/ or gui/.
"""

__version__ = "0.1.0"
