"""The sync service's numbered schema migrations (component `sync`); a package so that the files
ship with the wheel."""
