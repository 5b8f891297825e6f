"""The node's Ed25519 signing key (PyNaCl). Key ids are `ed25519:<n>`; the first key is n = 1."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from services.core.errors import FailedPrecondition
from services.core.secretfile import read_secret, write_secret


@dataclass(frozen=True)
class NodeSigningKey:
    key_id: str
    key: SigningKey

    def __repr__(self) -> str:
        return f"NodeSigningKey({self.key_id}, <secret>)"

    @property
    def public_hex(self) -> str:
        return bytes(self.key.verify_key).hex()


def create_signing_key(path: Path, *, version: int = 1) -> NodeSigningKey:
    key = SigningKey.generate()
    write_secret(path, f"ed25519:{version}\n".encode() + bytes(key).hex().encode() + b"\n")
    return NodeSigningKey(f"ed25519:{version}", key)


def load_signing_key(path: Path) -> NodeSigningKey:
    lines = read_secret(path).decode("ascii", errors="replace").split()
    if len(lines) != 2 or not lines[0].startswith("ed25519:") or len(lines[1]) != 64:
        raise FailedPrecondition(f"signing key file {path} is not in the expected format")
    return NodeSigningKey(lines[0], SigningKey(bytes.fromhex(lines[1])))
