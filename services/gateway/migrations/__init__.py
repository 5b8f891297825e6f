"""The gateway's numbered schema migrations (component "gateway"), applied by
`services.core.db.migrations`; a package so that the files ship with the wheel."""
