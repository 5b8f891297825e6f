"""The audit log's numbered schema migrations (`NNNN_name.sql`), applied by
`services.core.db.migrations`; a package so that the files ship with the wheel."""
