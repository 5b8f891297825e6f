"""The node's only public face: mutual TLS, caller identity from the verified certificate,
per-method authorisation, rate and size limits, deadlines, and a hash-chained audit record of
every call; the servicers it fronts run in-process behind it (see `app.start_gateway`)."""
