"""The node's signing keys on disk and the domain-separated signatures every signed thing uses."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey, VerifyKey

from services.core import signing
from services.core.errors import FailedPrecondition, InvalidArgument, NotFound

DOMAINS = st.binary(min_size=1, max_size=40).filter(lambda d: b"\0" not in d)
KEY = signing.NodeSigningKey("ed25519:1", SigningKey.generate())


def test_first_key_then_rotations_form_the_keyring(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys" / "signing"
    first = signing.create_first_key(keys_dir)
    assert first.key_id == "ed25519:1"
    assert stat.S_IMODE((keys_dir / "ed25519_1.key").stat().st_mode) == 0o600
    with pytest.raises(FailedPrecondition, match="already holds signing keys"):
        signing.create_first_key(keys_dir)
    second = signing.rotate(keys_dir)
    tenth = [signing.rotate(keys_dir) for _ in range(8)][-1]
    assert (second.key_id, tenth.key_id) == ("ed25519:2", "ed25519:10")
    keyring = signing.Keyring.load(keys_dir)
    assert keyring.current.key_id == "ed25519:10"
    assert [k.version for k in keyring.all()] == list(range(1, 11))
    assert keyring.by_id("ed25519:1").public_key == first.public_key
    with pytest.raises(NotFound, match="ed25519:11"):
        keyring.by_id("ed25519:11")
    assert "<secret>" in repr(keyring) and first.public_hex not in repr(keyring)


def test_keyring_refuses_missing_open_or_mislabelled_keys(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="hashex node init"):
        signing.Keyring.load(tmp_path / "nothing")
    signing.create_first_key(tmp_path)
    (tmp_path / "ed25519_1.key").chmod(0o640)
    with pytest.raises(FailedPrecondition, match="accessible to group or others"):
        signing.Keyring.load(tmp_path)
    (tmp_path / "ed25519_1.key").chmod(0o600)
    (tmp_path / "ed25519_1.key").rename(tmp_path / "ed25519_7.key")
    with pytest.raises(FailedPrecondition, match="holds key ed25519:1"):
        signing.Keyring.load(tmp_path)
    (tmp_path / "ed25519_7.key").unlink()
    bad = tmp_path / "ed25519_1.key"
    bad.write_text("ed25519:1\n" + "zz" * 32 + "\n")
    bad.chmod(0o600)
    with pytest.raises(FailedPrecondition, match="expected format"):
        signing.Keyring.load(tmp_path)


def test_key_ids_are_ed25519_with_a_positive_version() -> None:
    assert signing.parse_key_id("ed25519:12") == 12
    for bad in ("ed25519:0", "ed25519:01", "ed25519:", "rsa:1", " ed25519:1", "ed25519:1\n"):
        with pytest.raises(InvalidArgument, match="ed25519:<n>"):
            signing.parse_key_id(bad)


@given(domain=DOMAINS, message=st.binary(max_size=200))
def test_signatures_verify_only_for_their_domain_message_and_key(
    domain: bytes, message: bytes
) -> None:
    signature = signing.sign_bytes(KEY, domain, message)
    assert signing.verify_bytes(KEY.public_key, domain, message, signature)
    assert not signing.verify_bytes(KEY.public_key, domain + b"x", message, signature)
    assert not signing.verify_bytes(KEY.public_key, domain, message + b"\0", signature)
    other = bytes(SigningKey.generate().verify_key)
    assert not signing.verify_bytes(other, domain, message, signature)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not signing.verify_bytes(KEY.public_key, domain, message, flipped)


def test_malformed_keys_and_signatures_do_not_verify_and_never_raise() -> None:
    signature = signing.sign_bytes(KEY, b"d", b"m")
    assert not signing.verify_bytes(b"short", b"d", b"m", signature)
    assert not signing.verify_bytes(KEY.public_key, b"d", b"m", signature[:63])
    assert not signing.verify_bytes(b"\xff" * 32, b"d", b"m", signature)
    with pytest.raises(InvalidArgument, match="NUL"):
        signing.sign_bytes(KEY, b"a\0b", b"m")


def test_framing_matches_the_contract() -> None:
    """federation.proto: Ed25519 over "hashex.v1.BatchBody\\0" + body, and the rotation over
    "hashex.v1.KeyRotation\\0" + key_id + "\\0" + public_key."""
    body = b"\x08\x01serialized-body"
    signature = signing.sign_bytes(KEY, signing.BATCH_DOMAIN, body)
    VerifyKey(KEY.public_key).verify(b"hashex.v1.BatchBody\0" + body, signature)
    new = signing.NodeSigningKey("ed25519:2", SigningKey.generate())
    message = signing.rotation_message(new.key_id, new.public_key)
    assert message == b"ed25519:2\0" + new.public_key
    vouch = signing.sign_bytes(KEY, signing.KEY_ROTATION_DOMAIN, message)
    VerifyKey(KEY.public_key).verify(b"hashex.v1.KeyRotation\0" + message, vouch)


def test_the_key_history_outlives_deleted_key_files(tmp_path: Path) -> None:
    first = signing.create_first_key(tmp_path)
    second = signing.rotate(tmp_path)
    (tmp_path / "ed25519_1.key").unlink()
    keyring = signing.Keyring.load(tmp_path)
    assert [k.key_id for k in keyring.all()] == ["ed25519:2"]
    old, new = keyring.history
    assert (old.key_id, old.public_key) == ("ed25519:1", first.public_key)
    assert new.signed_by_key_id == "ed25519:1"
    message = signing.rotation_message(new.key_id, second.public_key)
    assert signing.verify_bytes(
        first.public_key, signing.KEY_ROTATION_DOMAIN, message, new.rotation_signature
    ), "the rotation was vouched for by key 1 when it happened"
    assert "secret" not in (tmp_path / "history.json").read_text()
    assert first.key.encode().hex() not in (tmp_path / "history.json").read_text()


def test_revocation_only_widens_and_never_hits_the_current_key(tmp_path: Path) -> None:
    signing.create_first_key(tmp_path)
    signing.rotate(tmp_path)
    with pytest.raises(FailedPrecondition, match="rotate-key"):
        signing.revoke(tmp_path, "ed25519:2", from_seq=1)
    with pytest.raises(InvalidArgument, match="seq 1 or later"):
        signing.revoke(tmp_path, "ed25519:1", from_seq=0)
    assert signing.revoke(tmp_path, "ed25519:1", from_seq=10)[1] is True
    assert signing.revoke(tmp_path, "ed25519:1", from_seq=20)[1] is False
    record, changed = signing.revoke(tmp_path, "ed25519:1", from_seq=1)
    assert changed and record.revoked_from_seq == 1
    assert signing.Keyring.load(tmp_path).record("ed25519:1").revoked_from_seq == 1


def test_a_history_contradicting_the_key_files_is_refused(tmp_path: Path) -> None:
    signing.create_first_key(tmp_path)
    signing.rotate(tmp_path)
    (tmp_path / "ed25519_2.key").unlink()
    with pytest.raises(FailedPrecondition, match=r"ed25519:2 is recorded .* file is missing"):
        signing.Keyring.load(tmp_path)
    (tmp_path / "ed25519_1.key").unlink()
    signing.create_signing_key(tmp_path / "ed25519_1.key")
    signing.create_signing_key(tmp_path / "ed25519_2.key", version=2)
    with pytest.raises(FailedPrecondition, match="not the key its history records"):
        signing.Keyring.load(tmp_path)
