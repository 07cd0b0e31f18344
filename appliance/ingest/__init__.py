"""Reading what lands in the inbox: completeness, DICOM / PNG / TIFF parsing, view rules, quarantine.

- :mod:`film`: :class:`Film`, what the runtime knows about one accepted input file
- :mod:`errors`: the reason codes a file is quarantined with
- :mod:`spacing`: pixel spacing in the patient plane from a DICOM header
- :mod:`dicom_reader` / :mod:`image_reader`: one file -> :class:`Film` (or :class:`IngestError`)
- :mod:`classify`: the declarative view rules and the not-a-lower-limb checks
- :mod:`reader`: the entry point, :func:`read_film`
- :mod:`complete`: when an inbox file is complete
- :mod:`quarantine`: moving a rejected file aside with a JSON reason
- :mod:`watch`: the watchdog observer feeding candidate paths
"""
