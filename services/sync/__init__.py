"""Federation: signed change log, pulls from peers, apply (not built yet; see the README)."""
