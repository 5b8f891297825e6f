"""The peer card: the small signed file operators exchange to federate two nodes.

A card names a node (id, the endpoint its gateway listens on), its CA certificate (what the
receiving node pins for that id) and the history of its public signing keys: every key it ever
had, oldest first, the last one current, each older one retired (valid for the batches up to the
rotation that published its successor) and a revoked one marked with the seq of the origin's log
from which it signs nothing (`revoked_from_seq`, 1: entirely; left out when not revoked, so a
card without revocations has the bytes it always had). See services.core.key_history for the
validity windows. The file is one line of canonical JSON:

    {"card":"<base64 of the card bytes>","format":"hashex.v1.PeerCard","key_id":"ed25519:<n>",
     "signature":"<base64>"}

where the card bytes are themselves canonical JSON and the signature is Ed25519 by the card's
current (highest) key over PEER_CARD_DOMAIN + NUL + card bytes. The bytes are signed and carried
(never re-serialised to verify), and parsing is strict: there is exactly one accepted byte form
of any card, so an altered file is refused rather than half-understood.

The self-signature proves only that whoever holds the keys made the card; that the keys and CA
belong to the agency named is what the operators confirm out of band (the CA fingerprint).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from services.core.config import check_node_id
from services.core.errors import InvalidArgument, NotFound
from services.core.signing import (
    PEER_CARD_DOMAIN,
    SIGNATURE_BYTES,
    Keyring,
    parse_key_id,
    sign_bytes,
    verify_bytes,
)
from services.core.tls import certificate_fingerprint

CARD_FORMAT = "hashex.v1.PeerCard"
# A card is a CA certificate and a few keys: anything larger is not a card.
MAX_CARD_BYTES = 64 * 1024
MAX_KEYS = 256
_CA_NAME_PREFIX = "hashex node CA "
_HEX_KEY = re.compile(r"[0-9a-f]{64}")
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


@dataclass(frozen=True)
class PeerKey:
    """One public signing key of a peer: `ed25519:<n>`, its 32 raw bytes, and the seq of the
    peer's log from which it signs nothing (0: not revoked; 1: revoked entirely)."""

    key_id: str
    public_key: bytes
    revoked_from_seq: int = 0


@dataclass(frozen=True)
class PeerCard:
    node_id: str
    # host:port of the node's gateway.
    endpoint: str
    # The node's CA (PEM): it must have issued any certificate that claims this node id.
    ca_certificate_pem: bytes
    # Oldest first; the last is the node's current key.
    signing_keys: tuple[PeerKey, ...]

    @property
    def ca_fingerprint(self) -> str:
        return certificate_fingerprint(self.ca_certificate_pem)

    @property
    def current_key(self) -> PeerKey:
        return self.signing_keys[-1]

    def key(self, key_id: str) -> PeerKey:
        for key in self.signing_keys:
            if key.key_id == key_id:
                return key
        raise NotFound(f"peer {self.node_id} has no signing key {key_id!r} on its card")


def ca_node_id(ca_certificate_pem: bytes) -> str | None:
    """The node id a hashex node CA was made for (its subject names it), else None."""
    try:
        certificate = x509.load_pem_x509_certificate(ca_certificate_pem)
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except Exception:
        return None
    common_name = names[0].value if names else ""
    if isinstance(common_name, str) and common_name.startswith(_CA_NAME_PREFIX):
        return common_name.removeprefix(_CA_NAME_PREFIX)
    return None


def check_endpoint(endpoint: str) -> str:
    """HOST:PORT that a peer can dial: port 1-65535 (0 means "any" when listening, not here)."""
    host, sep, port = endpoint.rpartition(":")
    if (
        not sep
        or not _HOST.fullmatch(host)
        or not port.isdigit()
        or port != str(int(port))
        or not 1 <= int(port) <= 65535
    ):
        raise InvalidArgument(
            f"endpoint {endpoint!r} must be HOST:PORT that peers can dial, port 1-65535 "
            "(IPv6 in brackets, e.g. [2001:db8::1]:7443)"
        )
    return endpoint


def make_card(*, node_id: str, endpoint: str, ca_certificate_pem: bytes, keyring: Keyring) -> bytes:
    """The card file for this node, signed by its current key. Deterministic: the same node,
    endpoint and keys always give the same bytes, so re-sending an unchanged card is a no-op."""
    card = PeerCard(
        node_id=node_id,
        endpoint=endpoint,
        ca_certificate_pem=ca_certificate_pem,
        signing_keys=tuple(
            PeerKey(r.key_id, r.public_key, r.revoked_from_seq) for r in keyring.history
        ),
    )
    _check_card(card)
    body = _card_bytes(card)
    signer = keyring.current
    return _file_bytes(
        {
            "card": _b64(body),
            "format": CARD_FORMAT,
            "key_id": signer.key_id,
            "signature": _b64(sign_bytes(signer, PEER_CARD_DOMAIN, body)),
        }
    )


def read_card(source: Path | bytes) -> PeerCard:
    """The card in a file (or its bytes), after checking its form, its CA and its signature by
    its own current key. InvalidArgument says what is wrong; nothing half-read is returned."""
    if isinstance(source, Path):
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            raise InvalidArgument(f"card file {source} does not exist") from None
        except OSError as error:
            raise InvalidArgument(f"card file {source} cannot be read: {error.strerror}") from None
    else:
        data = source
    if len(data) > MAX_CARD_BYTES:
        raise InvalidArgument(f"peer card is larger than {MAX_CARD_BYTES} bytes: not a card")
    outer = _strict_json(data, "peer card file")
    _exact_keys(outer, {"card", "format", "key_id", "signature"}, "peer card file")
    if _file_bytes(outer) != data:
        raise _altered("the file is not in its canonical form")
    if outer["format"] != CARD_FORMAT:
        raise InvalidArgument(f"peer card format {outer['format']!r} is not {CARD_FORMAT}")
    body = _unb64(_text(outer, "card"), "card")
    signature = _unb64(_text(outer, "signature"), "signature")
    card = _parse_body(body)
    signer = _text(outer, "key_id")
    if signer != card.current_key.key_id:
        raise InvalidArgument(
            f"peer card is signed by {signer!r}, not by the node's current key "
            f"{card.current_key.key_id}"
        )
    if len(signature) != SIGNATURE_BYTES or not verify_bytes(
        card.current_key.public_key, PEER_CARD_DOMAIN, body, signature
    ):
        raise _altered("its signature does not verify")
    return card


def _parse_body(body: bytes) -> PeerCard:
    raw = _strict_json(body, "peer card")
    _exact_keys(raw, {"ca_certificate_pem", "endpoint", "node_id", "signing_keys"}, "peer card")
    keys = raw["signing_keys"]
    if not isinstance(keys, list) or not 1 <= len(keys) <= MAX_KEYS:
        raise InvalidArgument(f"peer card signing_keys must list 1-{MAX_KEYS} keys")
    card = PeerCard(
        node_id=_text(raw, "node_id"),
        endpoint=_text(raw, "endpoint"),
        ca_certificate_pem=_text(raw, "ca_certificate_pem").encode("ascii", errors="replace"),
        signing_keys=tuple(_parse_key(item, index) for index, item in enumerate(keys)),
    )
    _check_card(card)
    if _card_bytes(card) != body:
        raise _altered("the card is not in its canonical form")
    return card


def _parse_key(item: Any, index: int) -> PeerKey:
    where = f"peer card signing_keys[{index}]"
    if not isinstance(item, dict):
        raise InvalidArgument(f"{where} must be an object")
    fields = {"key_id", "public_key"}
    _exact_keys(item, fields | ({"revoked_from_seq"} & set(item)), where)
    public_hex = _text(item, "public_key")
    if not _HEX_KEY.fullmatch(public_hex):
        raise InvalidArgument(f"{where}.public_key must be 64 lowercase hex characters")
    revoked = item.get("revoked_from_seq", 0)
    if "revoked_from_seq" in item and (
        not isinstance(revoked, int) or isinstance(revoked, bool) or revoked < 1
    ):
        raise InvalidArgument(f"{where}.revoked_from_seq must be a seq >= 1")
    return PeerKey(_text(item, "key_id"), bytes.fromhex(public_hex), revoked)


def _check_card(card: PeerCard) -> None:
    """Everything a card must satisfy whoever made it: a valid id and endpoint, keys in version
    order without repeats, and a CA certificate that is a self-signed CA for this node id."""
    check_node_id(card.node_id)
    check_endpoint(card.endpoint)
    versions = [parse_key_id(k.key_id) for k in card.signing_keys]
    if not versions or versions != sorted(set(versions)):
        raise InvalidArgument("peer card signing keys must be listed once each, oldest first")
    if any(len(k.public_key) != 32 for k in card.signing_keys):
        raise InvalidArgument("peer card signing keys must be 32-byte Ed25519 public keys")
    if card.current_key.revoked_from_seq:
        raise InvalidArgument("peer card's current signing key is revoked: it can sign nothing")
    _check_ca(card.ca_certificate_pem, card.node_id)


def _check_ca(pem: bytes, node_id: str) -> None:
    # cryptography parses certificates, extensions and keys partly lazily, and a damaged
    # certificate fails in many ways (ValueError, InvalidVersion, UnsupportedAlgorithm, ...):
    # every one of them means the same to the caller.
    try:
        certificates = x509.load_pem_x509_certificates(pem)
        if len(certificates) != 1:
            raise InvalidArgument("peer card ca_certificate_pem must hold exactly one certificate")
        _check_self_signed_ca(certificates[0], pem)
    except InvalidArgument:
        raise
    except Exception:
        raise InvalidArgument("peer card CA certificate is damaged or not self-signed") from None
    if ca_node_id(pem) != node_id:
        raise InvalidArgument(f"peer card CA certificate is not the CA of node {node_id!r}")


def _check_self_signed_ca(certificate: x509.Certificate, pem: bytes) -> None:
    if certificate.public_bytes(serialization.Encoding.PEM) != pem:
        raise InvalidArgument("peer card ca_certificate_pem holds more than the certificate")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        is_ca = constraints.value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise InvalidArgument("peer card ca_certificate_pem is not a CA certificate")
    certificate.verify_directly_issued_by(certificate)


def _card_bytes(card: PeerCard) -> bytes:
    return _canonical(
        {
            "ca_certificate_pem": card.ca_certificate_pem.decode("ascii"),
            "endpoint": card.endpoint,
            "node_id": card.node_id,
            "signing_keys": [_key_json(k) for k in card.signing_keys],
        }
    )


def _key_json(key: PeerKey) -> dict[str, Any]:
    shown: dict[str, Any] = {"key_id": key.key_id, "public_key": key.public_key.hex()}
    if key.revoked_from_seq:
        shown["revoked_from_seq"] = key.revoked_from_seq
    return shown


def _file_bytes(outer: dict[str, Any]) -> bytes:
    return _canonical(outer) + b"\n"


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _strict_json(data: bytes, what: str) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise InvalidArgument(f"{what} repeats a field")
        return dict(pairs)

    def no_constants(name: str) -> Any:
        raise InvalidArgument(f"{what} holds {name}, which JSON does not allow")

    try:
        value = json.loads(
            data.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constants
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidArgument(f"{what} is not JSON: was it made by `hashex peer card`?") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return value


def _exact_keys(raw: dict[str, Any], expected: set[str], what: str) -> None:
    if set(raw) != expected:
        missing, extra = sorted(expected - set(raw)), sorted(set(raw) - expected)
        raise InvalidArgument(f"{what} fields are wrong (missing {missing}, unexpected {extra})")


def _text(raw: dict[str, Any], name: str) -> str:
    value = raw[name]
    if not isinstance(value, str):
        raise InvalidArgument(f"peer card field {name} must be a string")
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, name: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"peer card field {name} is not base64") from None
    if _b64(data) != text:
        raise _altered(f"field {name} is not in canonical base64")
    return data


def _altered(why: str) -> InvalidArgument:
    return InvalidArgument(
        f"peer card refused: {why}; the file was altered or damaged in transit, "
        "ask the peer's operator for the original file"
    )
