"""The node's audit log, a facility of every service that records calls or events: the record
and its hash chain (`chain`), its table (`store`, the only writer), group commit (`recorder`)."""
