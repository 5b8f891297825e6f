"""The node's Ed25519 signing keys (PyNaCl) and the one way hashex signs and verifies bytes.

Keys live in `keys/signing/ed25519_<n>.key` (0600), one file per version; key ids are
`ed25519:<n>` and the highest version is the current key. The rotation itself (the new public
key) is signed by the key it succeeds (`rotation_message`) when `rotate` makes it, and recorded
with every public key and revocation in `keys/signing/history.json`
(services.core.key_history): an old key file may then be deleted without losing anything peers
need, and a revoked key signs nothing more.

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
from services.core.key_history import KeyRecord, read_history, write_history
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
    """The node's signing keys whose files are present, oldest first (the last one signs), and
    the recorded history of every key it ever had (`history` merges both)."""

    keys: tuple[NodeSigningKey, ...]
    recorded: tuple[KeyRecord, ...] = ()

    def __post_init__(self) -> None:
        if not self.keys:
            raise FailedPrecondition("the keyring holds no signing key")

    @classmethod
    def load(cls, keys_dir: Path) -> Keyring:
        """Read `keys_dir`. Cheap (a handful of small files), so callers that must notice a
        rotation simply load again. A file whose name and key id disagree is refused: the name
        decides the order, the id is what peers see, and they must be the same. So is a key
        file that contradicts the history, and a history whose newest key has no file (the
        current key cannot be deleted)."""
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
        keyring = cls(tuple(sorted(found, key=lambda k: k.version)), read_history(keys_dir))
        keyring._check_history(keys_dir)
        return keyring

    def _check_history(self, keys_dir: Path) -> None:
        recorded = {r.key_id: r for r in self.recorded}
        for key in self.keys:
            record = recorded.get(key.key_id)
            if record is not None and record.public_key != key.public_key:
                raise FailedPrecondition(
                    f"signing key file for {key.key_id} in {keys_dir} is not the key its history "
                    "records; restore the original file from backup"
                )
        newest = max((parse_key_id(r.key_id) for r in self.recorded), default=0)
        if newest > self.current.version:
            raise FailedPrecondition(
                f"the current signing key {key_id(newest)} is recorded in {keys_dir} but its "
                "file is missing; restore it from backup (only older keys may be deleted)"
            )

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

    def has(self, key_id: str) -> bool:
        return any(k.key_id == key_id for k in self.keys)

    @property
    def history(self) -> tuple[KeyRecord, ...]:
        """Every key the node has had, oldest first: the recorded ones, and any key file not
        recorded yet (a node of an older release), vouched for by its predecessor when that
        key's file is present (Ed25519 is deterministic: the same signature every time)."""
        records = {r.key_id: r for r in self.recorded}
        for key in self.keys:
            if key.key_id in records:
                continue
            previous = key_id(key.version - 1) if key.version > 1 else ""
            signature = b""
            if previous and self.has(previous):
                message = rotation_message(key.key_id, key.public_key)
                signature = sign_bytes(self.by_id(previous), KEY_ROTATION_DOMAIN, message)
            records[key.key_id] = KeyRecord(
                key.key_id, key.public_key, previous if signature else "", signature
            )
        return tuple(sorted(records.values(), key=lambda r: parse_key_id(r.key_id)))

    def record(self, key_id: str) -> KeyRecord:
        for record in self.history:
            if record.key_id == key_id:
                return record
        raise NotFound(f"this node never had a signing key {key_id!r}")


def record_history(keys_dir: Path) -> Keyring:
    """Write the history file when it lacks a key whose file is present; returns the keyring."""
    keyring = Keyring.load(keys_dir)
    if keyring.history != keyring.recorded:
        write_history(keys_dir, keyring.history)
        keyring = Keyring.load(keys_dir)
    return keyring


def create_first_key(keys_dir: Path) -> NodeSigningKey:
    """The node's first key, `ed25519:1`; refuses when the directory already holds keys."""
    if any(keys_dir.glob("ed25519_*.key")) or read_history(keys_dir):
        raise FailedPrecondition(f"{keys_dir} already holds signing keys; they are kept")
    key = create_signing_key(key_path(keys_dir, 1), version=1)
    record_history(keys_dir)
    return key


def rotate(keys_dir: Path) -> NodeSigningKey:
    """Add the next key version, which becomes current and retires the previous one; the
    rotation is signed by the previous key now and recorded, so that key's file may be deleted
    afterwards. Two concurrent rotations cannot both win: the key file is created exclusively."""
    current = record_history(keys_dir).current
    version = current.version + 1
    key = create_signing_key(key_path(keys_dir, version), version=version)
    record_history(keys_dir)
    return key


def revoke(keys_dir: Path, revoked_key_id: str, *, from_seq: int) -> tuple[KeyRecord, bool]:
    """Mark a key revoked from seq `from_seq` of this node's log (1: entirely); returns its
    record and whether anything changed (a revocation only widens). The current key cannot be
    revoked: rotate first, so that a valid key signs what follows."""
    if from_seq < 1:
        raise InvalidArgument(f"a key is revoked from seq 1 or later, not {from_seq}")
    keyring = record_history(keys_dir)
    record = keyring.record(revoked_key_id)
    if record.key_id == keyring.current.key_id:
        raise FailedPrecondition(
            f"{record.key_id} is the current signing key; run `hashex node rotate-key` first, "
            "then revoke it"
        )
    if record.revoked_from_seq and record.revoked_from_seq <= from_seq:
        return record, False
    revoked = record.revoked(from_seq)
    write_history(
        keys_dir, tuple(revoked if r.key_id == record.key_id else r for r in keyring.history)
    )
    return revoked, True


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
