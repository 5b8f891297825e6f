"""The node's public face: mTLS, identity, policy, audit (not built yet; see the README)."""
