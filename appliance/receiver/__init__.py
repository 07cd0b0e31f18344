"""DICOM networking of the appliance: the optional C-STORE receiver into the inbox (:mod:`.scp`) and the
optional sender of the outbox's DICOM objects to a PACS (:mod:`.sender`). Both are off by default."""
