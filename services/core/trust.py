"""Whom this node trusts: the pinned peer cards in `peers/<peer-id>.card` and the deny-list of
certificate fingerprints in `peers/denied.txt`.

Operators change these files with `hashex peer ...` while the node runs; the running node sees
the change at the next connection or call without a restart. `TrustStore` is therefore cheap to
ask on every call: it stats the files and re-reads only those whose inode, mtime or size changed.
grpc's dynamic-credentials fetcher asks it from grpc's own thread, so it is thread-safe.

A pinned card that no longer parses is left out (logged once), never half-trusted: failing
closed keeps a damaged file from widening trust.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography import x509

from services.core.config import check_node_id
from services.core.errors import FailedPrecondition, InvalidArgument, NotFound
from services.core.peer_card import (
    CARD_FORMAT,
    PeerCard,
    PeerKey,
    ca_node_id,
    check_endpoint,
    make_card,
    read_card,
)

__all__ = [
    "CARD_FORMAT",
    "DENIED_FILE",
    "PeerCard",
    "PeerKey",
    "PinResult",
    "TrustStore",
    "ca_node_id",
    "card_path",
    "check_endpoint",
    "deny",
    "make_card",
    "parse_fingerprint",
    "pin_card",
    "read_card",
    "read_denied",
    "unpin",
]

DENIED_FILE = "denied.txt"
CARD_SUFFIX = ".card"
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_log = logging.getLogger(__name__)

# What identifies one version of a file: a replace (new inode) or an edit (mtime, size).
_FileStamp = tuple[int, int, int]


@dataclass(frozen=True)
class PinResult:
    card: PeerCard
    outcome: Literal["pinned", "unchanged", "replaced"]


def card_path(peers_dir: Path, node_id: str) -> Path:
    return peers_dir / f"{check_node_id(node_id)}{CARD_SUFFIX}"


def parse_fingerprint(text: str) -> str:
    """A certificate's SHA-256 fingerprint as lowercase hex; accepts the colon-separated and
    upper-case forms other tools print (`openssl x509 -fingerprint -sha256`)."""
    cleaned = text.strip().removeprefix("sha256:").removeprefix("SHA256:").replace(":", "")
    cleaned = cleaned.lower()
    if not _FINGERPRINT.fullmatch(cleaned):
        raise InvalidArgument(
            f"fingerprint {text!r} must be a SHA-256 fingerprint: 64 hex characters "
            "(colons allowed), as `hashex peer list` or `openssl x509 -fingerprint -sha256` print"
        )
    return cleaned


def pin_card(
    peers_dir: Path,
    card_bytes: bytes,
    *,
    own_node_id: str,
    replace: bool = False,
    now: datetime | None = None,
) -> PinResult:
    """Pin the card (verified first) as `peers/<id>.card`, exactly the bytes received.

    Re-pinning the same card changes nothing; a different card for a pinned id (a new CA, an
    endpoint move) replaces the old one only with `replace=True`, since it changes whom the
    node trusts for that id."""
    card = read_card(card_bytes)
    if card.node_id == own_node_id:
        raise InvalidArgument(
            f"this card is for {own_node_id}, this node itself; add the card of a peer node"
        )
    _check_ca_valid_now(card, now or datetime.now(UTC))
    if card.ca_fingerprint in read_denied(peers_dir / DENIED_FILE):
        raise FailedPrecondition(
            f"the CA certificate of {card.node_id} is on this node's deny-list "
            f"({peers_dir / DENIED_FILE}); remove the line there first if that was a mistake"
        )
    path = card_path(peers_dir, card.node_id)
    existing = _pinned(path)
    if existing == card:
        return PinResult(card, "unchanged")
    was_pinned = path.exists()
    if was_pinned and not replace:
        raise FailedPrecondition(
            f"peer {card.node_id} is already pinned with a different card "
            f"({_differences(existing, card)}); confirm the change with the peer's operator and "
            "pass --replace"
        )
    _write_atomically(path, card_bytes)
    return PinResult(card, "replaced" if was_pinned else "pinned")


def unpin(peers_dir: Path, node_id: str) -> bool:
    """Forget a peer's card; False when it was not pinned (removing twice is harmless)."""
    try:
        card_path(peers_dir, node_id).unlink()
    except FileNotFoundError:
        return False
    return True


def deny(peers_dir: Path, fingerprint: str, reason: str) -> bool:
    """Put a certificate fingerprint on the deny-list; False when it already was there. The
    reason is kept as a comment line above it (one line; it is for operators, not for callers)."""
    fingerprint = parse_fingerprint(fingerprint)
    path = peers_dir / DENIED_FILE
    if fingerprint in read_denied(path):
        return False
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = "# Certificate fingerprints refused at the gateway (`hashex peer revoke`).\n"
    if current and not current.endswith("\n"):
        current += "\n"
    note = " ".join(reason.split()) or "revoked"
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    _write_atomically(path, f"{current}# {stamp} {note}\n{fingerprint}\n".encode())
    return True


def read_denied(path: Path) -> frozenset[str]:
    """The fingerprints in a deny-list file (empty when it does not exist). A line that is not
    a fingerprint is skipped with a warning: it cannot name a certificate to refuse."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return frozenset()
    found: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            found.add(parse_fingerprint(entry))
        except InvalidArgument:
            _log.warning("%s line %d is not a SHA-256 fingerprint; ignored", path, number)
    return frozenset(found)


class TrustStore:
    """The pinned peers and the deny-list as the running node sees them right now."""

    def __init__(
        self, peers_dir: Path, own_ca_pem: bytes, *, own_node_id: str | None = None
    ) -> None:
        self._peers_dir = peers_dir
        self._own_ca_pem = own_ca_pem
        self._own_node_id = own_node_id or ca_node_id(own_ca_pem)
        self._lock = threading.Lock()
        self._cards: dict[str, tuple[_FileStamp, PeerCard | None]] = {}
        self._denied: tuple[_FileStamp | None, frozenset[str]] = (None, frozenset())

    @property
    def own_ca_pem(self) -> bytes:
        return self._own_ca_pem

    @property
    def own_node_id(self) -> str | None:
        return self._own_node_id

    def peers(self) -> dict[str, PeerCard]:
        """Every pinned peer by node id (a fresh dict: the caller may keep it)."""
        with self._lock:
            self._refresh_cards()
            return {card.node_id: card for _, card in self._cards.values() if card is not None}

    def peer(self, node_id: str) -> PeerCard:
        card = self.peers().get(node_id)
        if card is None:
            raise NotFound(f"{node_id!r} is not a pinned peer of this node")
        return card

    def ca_for(self, node_id: str) -> bytes | None:
        """The CA that must have issued any certificate claiming `node_id`: this node's own CA
        for its own id, the pinned CA for a peer, None for a stranger."""
        if node_id == self._own_node_id:
            return self._own_ca_pem
        card = self.peers().get(node_id)
        return card.ca_certificate_pem if card else None

    def denied(self) -> frozenset[str]:
        with self._lock:
            path = self._peers_dir / DENIED_FILE
            stamp = _stamp(path)
            if stamp is None:
                self._denied = (None, frozenset())
            elif stamp != self._denied[0]:
                self._denied = (stamp, read_denied(path))
            return self._denied[1]

    def client_cas(self) -> list[bytes]:
        """The CAs whose certificates may open a connection: this node's own (its units and
        operators) and each pinned peer's, minus any CA whose fingerprint is denied."""
        denied = self.denied()
        cas = [self._own_ca_pem]
        for _, card in sorted(self.peers().items()):
            if card.ca_fingerprint not in denied:
                cas.append(card.ca_certificate_pem)
        return cas

    def _refresh_cards(self) -> None:
        seen: set[str] = set()
        try:
            entries = list(os.scandir(self._peers_dir))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if not entry.name.endswith(CARD_SUFFIX) or entry.name.startswith("."):
                continue
            stamp = _stamp(Path(entry.path))
            if stamp is None:
                continue
            seen.add(entry.name)
            cached = self._cards.get(entry.name)
            if cached is None or cached[0] != stamp:
                self._cards[entry.name] = (stamp, self._load(Path(entry.path)))
        for gone in set(self._cards) - seen:
            del self._cards[gone]

    def _load(self, path: Path) -> PeerCard | None:
        try:
            card = read_card(path)
        except InvalidArgument as error:
            _log.warning("pinned card %s is not trusted: %s", path.name, error)
            return None
        except Exception:
            # The gateway asks from grpc's credentials thread, which must never see an error:
            # whatever else goes wrong with one file leaves that peer out, not the node down.
            _log.exception("pinned card %s could not be read; not trusted", path.name)
            return None
        if path.name != f"{card.node_id}{CARD_SUFFIX}" or card.node_id == self._own_node_id:
            _log.warning("pinned card %s is for node %s; not trusted", path.name, card.node_id)
            return None
        return card


def _stamp(path: Path) -> _FileStamp | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return (status.st_ino, status.st_mtime_ns, status.st_size)


def _pinned(path: Path) -> PeerCard | None:
    try:
        return read_card(path)
    except InvalidArgument:
        return None


def _check_ca_valid_now(card: PeerCard, now: datetime) -> None:
    certificate = x509.load_pem_x509_certificate(card.ca_certificate_pem)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise InvalidArgument(
            f"the CA certificate of {card.node_id} is valid only from "
            f"{certificate.not_valid_before_utc:%Y-%m-%d} to "
            f"{certificate.not_valid_after_utc:%Y-%m-%d}; ask its operator for a current card"
        )


def _differences(old: PeerCard | None, new: PeerCard) -> str:
    if old is None:
        return "the pinned file no longer verifies"
    changed = []
    if old.ca_fingerprint != new.ca_fingerprint:
        changed.append(f"CA {old.ca_fingerprint[:16]}… -> {new.ca_fingerprint[:16]}…")
    if old.endpoint != new.endpoint:
        changed.append(f"endpoint {old.endpoint} -> {new.endpoint}")
    if old.signing_keys != new.signing_keys:
        changed.append("signing keys differ")
    return ", ".join(changed) or "different bytes"


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers (the running node) see the old file or the new one, never a partial write."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
