"""The node's Ed25519 signing keys (PyNaCl) and the one way hashex signs and verifies bytes.

Keys live in `keys/signing/ed25519_<n>.key` (0600), one file per version; key ids are
`ed25519:<n>` and the highest version is the current key. Old keys are kept: a peer that has not
yet learned the new key still verifies what was signed before, and the rotation itself (the new
public key) is signed by the key it succeeds (`rotation_message`).

Every signature is over `domain + b"\\0" + message`, where the domain names what is signed
(`hashex.v1.BatchBody`, `hashex.v1.PeerCard`, ...). A signature made for one purpose therefore
never verifies as another, even when the message bytes happen to coincide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from services.core.errors import FailedPrecondition, InvalidArgument, NotFound
from services.core.secretfile import read_secret, write_secret

KEY_ID_PREFIX = "ed25519:"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
# Domains of everything hashex signs; the contract (federation.proto) names the first two.
BATCH_DOMAIN = b"hashex.v1.BatchBody"
KEY_ROTATION_DOMAIN = b"hashex.v1.KeyRotation"
PEER_CARD_DOMAIN = b"hashex.v1.PeerCard"

_KEY_ID = re.compile(r"ed25519:([1-9][0-9]{0,8})")
_KEY_FILE = re.compile(r"ed25519_([1-9][0-9]{0,8})\.key")


@dataclass(frozen=True)
class NodeSigningKey:
    """One version of the node's key; the secret half never appears in repr or logs."""

    key_id: str
    key: SigningKey

    def __repr__(self) -> str:
        return f"NodeSigningKey({self.key_id}, <secret>)"

    @property
    def version(self) -> int:
        return parse_key_id(self.key_id)

    @property
    def public_key(self) -> bytes:
        """The 32 raw bytes peers pin and verify with."""
        return bytes(self.key.verify_key)

    @property
    def public_hex(self) -> str:
        return self.public_key.hex()


def key_id(version: int) -> str:
    if version < 1:
        raise InvalidArgument(f"key version must be >= 1, got {version}")
    return f"{KEY_ID_PREFIX}{version}"


def parse_key_id(text: str) -> int:
    """The version `n` of `ed25519:<n>`; InvalidArgument for anything else."""
    match = _KEY_ID.fullmatch(text)
    if not match:
        raise InvalidArgument(f"key id {text!r} must be ed25519:<n> with n >= 1")
    return int(match.group(1))


def key_path(keys_dir: Path, version: int) -> Path:
    return keys_dir / f"ed25519_{version}.key"


def create_signing_key(path: Path, *, version: int = 1) -> NodeSigningKey:
    """Write a new key of `version` to `path` (0600); never overwrites an existing file."""
    key = SigningKey.generate()
    try:
        write_secret(path, f"{key_id(version)}\n{bytes(key).hex()}\n".encode())
    except FileExistsError:
        raise FailedPrecondition(f"signing key file {path} already exists; it is kept") from None
    return NodeSigningKey(key_id(version), key)


def load_signing_key(path: Path) -> NodeSigningKey:
    """Read one key file; refuses a file readable by others or in another format."""
    fields = read_secret(path).decode("ascii", errors="replace").split()
    if len(fields) != 2 or not _KEY_ID.fullmatch(fields[0]) or len(fields[1]) != 64:
        raise FailedPrecondition(f"signing key file {path} is not in the expected format")
    try:
        seed = bytes.fromhex(fields[1])
    except ValueError:
        raise FailedPrecondition(f"signing key file {path} is not in the expected format") from None
    return NodeSigningKey(fields[0], SigningKey(seed))


@dataclass(frozen=True)
class Keyring:
    """Every version of the node's signing key, oldest first; the last one signs."""

    keys: tuple[NodeSigningKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise FailedPrecondition("the keyring holds no signing key")

    @classmethod
    def load(cls, keys_dir: Path) -> Keyring:
        """Read `keys_dir`. Cheap (a handful of small files), so callers that must notice a
        rotation simply load again. A file whose name and key id disagree is refused: the name
        decides the order, the id is what peers see, and they must be the same."""
        found: list[NodeSigningKey] = []
        paths = sorted(keys_dir.glob("ed25519_*.key")) if keys_dir.is_dir() else []
        for path in paths:
            match = _KEY_FILE.fullmatch(path.name)
            if not match:
                continue
            key = load_signing_key(path)
            if key.version != int(match.group(1)):
                raise FailedPrecondition(f"signing key file {path} holds key {key.key_id}")
            found.append(key)
        if not found:
            raise FailedPrecondition(
                f"no signing key in {keys_dir}; run `hashex node init` to create the node's keys"
            )
        return cls(tuple(sorted(found, key=lambda k: k.version)))

    @property
    def current(self) -> NodeSigningKey:
        return self.keys[-1]

    def by_id(self, key_id: str) -> NodeSigningKey:
        for key in self.keys:
            if key.key_id == key_id:
                return key
        raise NotFound(f"this node has no signing key {key_id!r}")

    def all(self) -> tuple[NodeSigningKey, ...]:
        return self.keys


def create_first_key(keys_dir: Path) -> NodeSigningKey:
    """The node's first key, `ed25519:1`; refuses when the directory already holds keys."""
    if any(keys_dir.glob("ed25519_*.key")):
        raise FailedPrecondition(f"{keys_dir} already holds signing keys; they are kept")
    return create_signing_key(key_path(keys_dir, 1), version=1)


def rotate(keys_dir: Path) -> NodeSigningKey:
    """Add the next key version, which becomes current; the old keys stay for verification.
    Two concurrent rotations cannot both win: the key file is created exclusively."""
    current = Keyring.load(keys_dir).current
    version = current.version + 1
    return create_signing_key(key_path(keys_dir, version), version=version)


def sign_bytes(key: NodeSigningKey, domain: bytes, message: bytes) -> bytes:
    """The 64-byte Ed25519 signature over `domain + NUL + message`."""
    return key.key.sign(_framed(domain, message)).signature


def verify_bytes(public_key: bytes, domain: bytes, message: bytes, signature: bytes) -> bool:
    """True only for a valid signature by `public_key` for this domain; never raises on
    malformed keys or signatures (they simply do not verify)."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        VerifyKey(public_key).verify(_framed(domain, message), signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def rotation_message(new_key_id: str, public_key: bytes) -> bytes:
    """What the previous key signs (domain KEY_ROTATION_DOMAIN) to vouch for its successor:
    `key_id + NUL + public_key`, as the contract's KeyRotation says."""
    return new_key_id.encode("ascii") + b"\0" + public_key


def _framed(domain: bytes, message: bytes) -> bytes:
    if not domain or b"\0" in domain:
        raise InvalidArgument("a signing domain is a non-empty name without NUL bytes")
    return domain + b"\0" + message
