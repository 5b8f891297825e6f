"""Sealing local-only case data at rest, and the node's case key.

Case data (case and exhibit references, file paths) never leaves the node and never appears in a
log line or an error message. It is stored sealed with PyNaCl's SecretBox. Next to each sealed
record sits a keyed BLAKE2b digest of the plaintext: equal case data of a media is stored once,
yet the digest reveals nothing to someone holding the database without the key (an unkeyed hash
of a guessable case reference could be confirmed by brute force).

The box key and the digest key are derived from the one 32-byte case key with distinct
personalisations, so the two uses never share a key.
"""

from __future__ import annotations

import json
from pathlib import Path

import nacl.exceptions
import nacl.hash
import nacl.secret
import nacl.utils
from nacl.encoding import RawEncoder

from services.core.errors import FailedPrecondition
from services.core.secretfile import read_secret, write_secret
from services.registry.model import CaseData

CASE_KEY_BYTES = 32
DIGEST_BYTES = 32
_SEAL_PERSON = b"hashex-case-box"
_DIGEST_PERSON = b"hashex-case-dgst"
_FINGERPRINT_PERSON = b"hashex-case-fpr"
# Inside the box, so a later format can be told apart from this one.
_FORMAT = 1


class CaseSealer:
    """Seals and opens CaseData with the node's case key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != CASE_KEY_BYTES:
            raise FailedPrecondition(f"the case key must be {CASE_KEY_BYTES} bytes")
        self._box = nacl.secret.SecretBox(_subkey(key, _SEAL_PERSON))
        self._digest_key = _subkey(key, _DIGEST_PERSON)
        # Names the key (safe to store and show: a one-way function of it), never reveals it.
        self.fingerprint = _subkey(key, _FINGERPRINT_PERSON)[:8].hex()

    def __repr__(self) -> str:
        return "CaseSealer(<key>)"

    def seal(self, case: CaseData) -> bytes:
        """Nonce and ciphertext of the case as one value (a fresh random nonce each time)."""
        return bytes(self._box.encrypt(_canonical(case)))

    def open(self, sealed: bytes) -> CaseData:
        """The case sealed in `sealed`, or FailedPrecondition when this key did not seal it."""
        try:
            plain = self._box.decrypt(sealed)
        except nacl.exceptions.CryptoError:
            raise FailedPrecondition(
                "a sealed case record cannot be opened with this node's case key "
                "(was the key file replaced?)"
            ) from None
        fields = json.loads(plain.decode("utf-8"))
        return CaseData(
            case_reference=fields["case_reference"],
            exhibit_reference=fields["exhibit_reference"],
            file_path=fields["file_path"],
        )

    def digest(self, case: CaseData) -> bytes:
        """A keyed digest: equal for equal case data, meaningless without the key."""
        return nacl.hash.blake2b(
            _canonical(case),
            digest_size=DIGEST_BYTES,
            key=self._digest_key,
            encoder=RawEncoder,
        )


def load_case_key(path: Path) -> bytes:
    """The node's case key; FailedPrecondition (saying how to fix it) when the file is missing,
    readable by group or others, or not a key."""
    key = read_secret(path)
    if len(key) != CASE_KEY_BYTES:
        raise FailedPrecondition(
            f"case key file {path} holds {len(key)} bytes instead of {CASE_KEY_BYTES}; "
            "restore it from the node's backup"
        )
    return key


def create_case_key(path: Path) -> bytes:
    """Write a new random case key to `path` (mode 0600 from creation); never overwrites one."""
    key = nacl.utils.random(CASE_KEY_BYTES)
    try:
        write_secret(path, key)
    except FileExistsError:
        raise FailedPrecondition(
            f"a case key already exists at {path}; it is kept, since replacing it would make "
            "the stored case data unreadable"
        ) from None
    return key


def _subkey(key: bytes, person: bytes) -> bytes:
    return nacl.hash.blake2b(
        b"", digest_size=CASE_KEY_BYTES, key=key, person=person, encoder=RawEncoder
    )


def _canonical(case: CaseData) -> bytes:
    """One byte form per case: sorted keys, no spaces, UTF-8."""
    document = {
        "format": _FORMAT,
        "case_reference": case.case_reference,
        "exhibit_reference": case.exhibit_reference,
        "file_path": case.file_path,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )
