"""Readers and writers of the hash-set formats police tools already use: Project VIC's VICS JSON,
Interpol ICSE CSV exports and plain hash lists. Every reader streams (memory flat whatever the
file size) and yields `records.ImportedMedia` or `records.Rejected`, one per record, in file
order."""
