"""Peer cards (strict, self-signed) and the trust store the running node reads per connection."""

from __future__ import annotations

import base64
import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from services.core import tls, trust
from services.core.errors import FailedPrecondition, InvalidArgument, NotFound
from services.core.signing import PEER_CARD_DOMAIN, Keyring, NodeSigningKey, key_id, sign_bytes

NODE_IDS = st.from_regex(r"[a-z][a-z0-9-]{1,20}", fullmatch=True)
HOSTS = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9.-]{0,30}", fullmatch=True),
    st.sampled_from(["127.0.0.1", "[::1]", "[2001:db8::7]"]),
)


def keyring(versions: int = 1) -> Keyring:
    return Keyring(
        tuple(NodeSigningKey(key_id(v), SigningKey.generate()) for v in range(1, versions + 1))
    )


GB_CA = tls.create_node_ca(node_id="gb-nca")
GB_KEYS = keyring(2)
GB_CARD = trust.make_card(
    node_id="gb-nca",
    endpoint="hashex.nca.example:7443",
    ca_certificate_pem=GB_CA.certificate_pem,
    keyring=GB_KEYS,
)
US_CA = tls.create_node_ca(node_id="us-fbi")


def forge(body: dict[str, object], signer: NodeSigningKey) -> bytes:
    """A card file built by hand with a valid signature: for contents `make_card` refuses."""
    card = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    outer = {
        "card": base64.b64encode(card).decode(),
        "format": "hashex.v1.PeerCard",
        "key_id": signer.key_id,
        "signature": base64.b64encode(sign_bytes(signer, PEER_CARD_DOMAIN, card)).decode(),
    }
    return json.dumps(outer, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def body_of(node_id: str, ca_pem: bytes, keys: Keyring) -> dict[str, object]:
    return {
        "ca_certificate_pem": ca_pem.decode(),
        "endpoint": "peer.example:7443",
        "node_id": node_id,
        "signing_keys": [{"key_id": k.key_id, "public_key": k.public_hex} for k in keys.all()],
    }


@given(node_id=NODE_IDS, host=HOSTS, port=st.integers(1, 65535), versions=st.integers(1, 4))
def test_card_round_trips(node_id: str, host: str, port: int, versions: int) -> None:
    keys = keyring(versions)
    ca = tls.create_node_ca(node_id=node_id)
    data = trust.make_card(
        node_id=node_id,
        endpoint=f"{host}:{port}",
        ca_certificate_pem=ca.certificate_pem,
        keyring=keys,
    )
    card = trust.read_card(data)
    assert card == trust.PeerCard(
        node_id=node_id,
        endpoint=f"{host}:{port}",
        ca_certificate_pem=ca.certificate_pem,
        signing_keys=tuple(trust.PeerKey(k.key_id, k.public_key) for k in keys.all()),
    )
    assert card.current_key.key_id == f"ed25519:{versions}"
    assert data == trust.make_card(
        node_id=node_id,
        endpoint=f"{host}:{port}",
        ca_certificate_pem=ca.certificate_pem,
        keyring=keys,
    )


@given(position=st.integers(0, len(GB_CARD) - 1), value=st.integers(0, 255))
def test_any_altered_byte_is_refused(position: int, value: int) -> None:
    if GB_CARD[position] == value:
        return
    tampered = GB_CARD[:position] + bytes([value]) + GB_CARD[position + 1 :]
    with pytest.raises(InvalidArgument):
        trust.read_card(tampered)


@given(junk=st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_cleanly(junk: bytes) -> None:
    with pytest.raises(InvalidArgument):
        trust.read_card(junk)


def test_changed_contents_without_the_key_do_not_verify() -> None:
    outer = json.loads(GB_CARD)
    body = json.loads(base64.b64decode(outer["card"]))
    body["endpoint"] = "attacker.example:7443"
    card = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    outer["card"] = base64.b64encode(card).decode()
    resigned = json.dumps(outer, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    with pytest.raises(InvalidArgument, match="signature does not verify"):
        trust.read_card(resigned)
    stranger = NodeSigningKey("ed25519:2", SigningKey.generate())
    with pytest.raises(InvalidArgument, match="signature does not verify"):
        trust.read_card(forge(body_of("gb-nca", GB_CA.certificate_pem, GB_KEYS), stranger))
    old = GB_KEYS.by_id("ed25519:1")
    with pytest.raises(InvalidArgument, match="not by the node's current key"):
        trust.read_card(forge(body_of("gb-nca", GB_CA.certificate_pem, GB_KEYS), old))


def test_ca_must_be_a_self_signed_ca_of_the_named_node() -> None:
    keys = keyring()
    with pytest.raises(InvalidArgument, match="not the CA of node 'gb-nca'"):
        trust.read_card(forge(body_of("gb-nca", US_CA.certificate_pem, keys), keys.current))
    leaf = tls.issue_node_certificate(GB_CA).certificate_pem
    with pytest.raises(InvalidArgument, match="not a CA certificate"):
        trust.read_card(forge(body_of("gb-nca", leaf, keys), keys.current))
    two = GB_CA.certificate_pem + US_CA.certificate_pem
    with pytest.raises(InvalidArgument, match="exactly one certificate"):
        trust.read_card(forge(body_of("gb-nca", two, keys), keys.current))
    with pytest.raises(InvalidArgument, match="not the CA of node"):
        trust.make_card(
            node_id="gb-nca",
            endpoint="a:1",
            ca_certificate_pem=US_CA.certificate_pem,
            keyring=keys,
        )


def test_bad_fields_are_named() -> None:
    keys = keyring()
    body = body_of("gb-nca", GB_CA.certificate_pem, keys)
    for field, value, message in [
        ("endpoint", "peer.example:0", "HOST:PORT"),
        ("endpoint", "peer.example", "HOST:PORT"),
        ("node_id", "GB", "node id"),
        ("signing_keys", [], "1-256 keys"),
        ("signing_keys", [{"key_id": "ed25519:1", "public_key": "AB" * 32}], "lowercase hex"),
        ("signing_keys", [{"key_id": "rsa:1", "public_key": "ab" * 32}], "ed25519:<n>"),
        ("extra", 1, "unexpected"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            trust.read_card(forge({**body, field: value}, keys.current))
    with pytest.raises(InvalidArgument, match="does not exist"):
        trust.read_card(Path("/nonexistent/gb-nca.card"))


def test_pinning_is_idempotent_refuses_self_and_needs_replace(tmp_path: Path) -> None:
    peers = tmp_path / "peers"
    with pytest.raises(InvalidArgument, match="this node itself"):
        trust.pin_card(peers, GB_CARD, own_node_id="gb-nca")
    assert trust.pin_card(peers, GB_CARD, own_node_id="us-fbi").outcome == "pinned"
    assert (peers / "gb-nca.card").read_bytes() == GB_CARD
    assert trust.pin_card(peers, GB_CARD, own_node_id="us-fbi").outcome == "unchanged"
    moved = trust.make_card(
        node_id="gb-nca",
        endpoint="new.example:7443",
        ca_certificate_pem=GB_CA.certificate_pem,
        keyring=GB_KEYS,
    )
    with pytest.raises(FailedPrecondition, match=r"endpoint .* -> new\.example:7443.*--replace"):
        trust.pin_card(peers, moved, own_node_id="us-fbi")
    assert trust.pin_card(peers, moved, own_node_id="us-fbi", replace=True).outcome == "replaced"
    assert trust.unpin(peers, "gb-nca") and not trust.unpin(peers, "gb-nca")


def test_pinning_refuses_expired_or_denied_cas(tmp_path: Path) -> None:
    later = datetime.now(UTC) + timedelta(days=6 * 365)
    with pytest.raises(InvalidArgument, match="valid only from"):
        trust.pin_card(tmp_path, GB_CARD, own_node_id="us-fbi", now=later)
    assert trust.deny(tmp_path, GB_CA.material.fingerprint.upper(), "CA key lost")
    with pytest.raises(FailedPrecondition, match="deny-list"):
        trust.pin_card(tmp_path, GB_CARD, own_node_id="us-fbi")


def test_fingerprints_are_normalised_and_deny_is_idempotent(tmp_path: Path) -> None:
    fingerprint = GB_CA.material.fingerprint
    colons = ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    assert trust.parse_fingerprint(colons) == fingerprint
    assert trust.parse_fingerprint(f"sha256:{fingerprint}") == fingerprint
    for bad in ("", "abc", fingerprint[:-1], fingerprint + "0", "g" * 64, "md5:" + "0" * 32):
        with pytest.raises(InvalidArgument, match="SHA-256 fingerprint"):
            trust.parse_fingerprint(bad)
    assert trust.deny(tmp_path, fingerprint, "leaked\nkey")
    assert not trust.deny(tmp_path, colons, "again")
    text = (tmp_path / "denied.txt").read_text()
    assert text.count(fingerprint) == 1 and "leaked key" in text
    assert trust.read_denied(tmp_path / "denied.txt") == {fingerprint}


def test_store_follows_the_files_and_rereads_only_changed_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    peers = tmp_path / "peers"
    store = trust.TrustStore(peers, US_CA.certificate_pem)
    assert store.own_node_id == "us-fbi"
    assert store.peers() == {} and store.denied() == frozenset()
    assert store.client_cas() == [US_CA.certificate_pem]
    trust.pin_card(peers, GB_CARD, own_node_id="us-fbi")
    first = store.peer("gb-nca")
    assert store.peer("gb-nca") is first, "an unchanged file is not read again"
    assert store.client_cas() == [US_CA.certificate_pem, GB_CA.certificate_pem]
    assert store.ca_for("gb-nca") == GB_CA.certificate_pem
    assert store.ca_for("us-fbi") == US_CA.certificate_pem and store.ca_for("xx-nope") is None
    leaf = tls.issue_node_certificate(GB_CA).fingerprint
    trust.deny(peers, leaf, "stolen")
    assert store.denied() == {leaf}
    trust.deny(peers, GB_CA.material.fingerprint, "compromised CA")
    assert store.client_cas() == [US_CA.certificate_pem]
    with caplog.at_level(logging.WARNING):
        (peers / "de-bka.card").write_bytes(b"{}")
        (peers / "fr-ocrvp.card").write_bytes(GB_CARD)
        assert set(store.peers()) == {"gb-nca"}
    assert (
        "de-bka.card is not trusted" in caplog.text and "fr-ocrvp.card is for node" in caplog.text
    )
    trust.unpin(peers, "gb-nca")
    with pytest.raises(NotFound, match="not a pinned peer"):
        store.peer("gb-nca")


def test_store_skips_a_card_of_its_own_node(tmp_path: Path) -> None:
    (tmp_path / "gb-nca.card").write_bytes(GB_CARD)
    assert trust.TrustStore(tmp_path, GB_CA.certificate_pem).peers() == {}


def test_store_is_safe_to_read_from_many_threads_while_pinning(tmp_path: Path) -> None:
    store = trust.TrustStore(tmp_path, US_CA.certificate_pem)
    problems: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                assert set(store.peers()) <= {"gb-nca"}
                assert 1 <= len(store.client_cas()) <= 2
        except BaseException as error:
            problems.append(error)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    for _ in range(30):
        trust.pin_card(tmp_path, GB_CARD, own_node_id="us-fbi")
        trust.unpin(tmp_path, "gb-nca")
    stop.set()
    for reader in readers:
        reader.join()
    assert problems == []


@pytest.mark.parametrize("flip", [0x01, 0x20, 0x80])
def test_every_position_altered_is_refused(flip: int) -> None:
    """The exhaustive companion of the property above: each byte, one bit flipped."""
    for position in range(len(GB_CARD)):
        tampered = bytearray(GB_CARD)
        tampered[position] ^= flip
        with pytest.raises(InvalidArgument):
            trust.read_card(bytes(tampered))


def test_a_card_carries_revocations_and_refuses_a_revoked_current_key() -> None:
    keys = keyring(3)
    history = tuple(r.revoked(4) if r.key_id == "ed25519:1" else r for r in keys.history)
    data = trust.make_card(
        node_id="gb-nca",
        endpoint="hashex.nca.example:7443",
        ca_certificate_pem=GB_CA.certificate_pem,
        keyring=Keyring(keys.keys, history),
    )
    card = trust.read_card(data)
    assert [k.revoked_from_seq for k in card.signing_keys] == [4, 0, 0]
    body = body_of("gb-nca", GB_CA.certificate_pem, keys)
    listed: list[dict[str, object]] = body["signing_keys"]  # type: ignore[assignment]
    for bad, why in ((0, "revoked_from_seq must be a seq >= 1"), ("4", "must be a seq")):
        listed[0]["revoked_from_seq"] = bad
        with pytest.raises(InvalidArgument, match=why):
            trust.read_card(forge(body, keys.current))
    listed[0].pop("revoked_from_seq")
    listed[2]["revoked_from_seq"] = 1
    with pytest.raises(InvalidArgument, match="current signing key is revoked"):
        trust.read_card(forge(body, keys.current))
