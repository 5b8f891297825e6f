"""The node's change log, written by every service that originates changes (the registry's
records, sync's key rotations) and read by the sync sender: `store` owns the table."""
