"""The caller headers a gateway adds for services running apart: what it encodes verifies to the
same caller, and any change to the headers, the method, the secret or the time is refused."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from services.core.caller import UNIT_ROLES, Caller
from services.core.errors import FailedPrecondition
from services.core.forwarded_caller import (
    CALLER_HEADER,
    FRESHNESS_S,
    MAC_HEADER,
    ForgedCaller,
    caller_metadata,
    ensure_internal_key,
    internal_key_path,
    load_internal_key,
    verify_caller,
)

secrets_ = st.binary(min_size=32, max_size=32)
methods = st.sampled_from(
    ["/hashex.v1.Federation/Pull", "/hashex.v1.Federation/PeerLookup", "/hashex.v1.Admin/X"]
) | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)


@st.composite
def callers(draw: st.DrawFn) -> Caller:
    kind = draw(st.sampled_from(["node", "unit", "operator"]))
    return Caller(
        node_id=draw(st.from_regex(r"[a-z][a-z0-9-]{1,20}", fullmatch=True)),
        kind=kind,
        name=None if kind == "node" else draw(names),
        role=draw(st.sampled_from(["unit", "operator", "peer", "admin", "none"])),
        fingerprint=draw(st.binary(min_size=32, max_size=32)).hex(),
        unit_roles=draw(st.frozensets(st.sampled_from(UNIT_ROLES))),
    )


@given(secrets_, methods, callers(), times, st.floats(-FRESHNESS_S + 0.01, FRESHNESS_S - 0.01))
def test_what_the_gateway_encodes_verifies_to_the_same_caller(
    secret: bytes, method: str, caller: Caller, now: float, skew: float
) -> None:
    headers = caller_metadata(secret, method, caller, now_s=now)
    assert all(value.isascii() and value.isprintable() for _, value in headers)
    assert verify_caller(secret, method, headers, now_s=now + skew) == caller


@given(secrets_, methods, callers(), times, st.data())
def test_any_change_to_a_header_is_refused(
    secret: bytes, method: str, caller: Caller, now: float, data: st.DataObject
) -> None:
    headers = dict(caller_metadata(secret, method, caller, now_s=now))
    key = data.draw(st.sampled_from([CALLER_HEADER, MAC_HEADER]))
    value = headers[key]
    position = data.draw(st.integers(0, len(value) - 1))
    replacement = data.draw(st.characters(min_codepoint=0x20, max_codepoint=0x7E))
    assume(replacement != value[position])
    headers[key] = value[:position] + replacement + value[position + 1 :]
    with pytest.raises(ForgedCaller):
        verify_caller(secret, method, tuple(headers.items()), now_s=now)


@given(secrets_, secrets_, methods, methods, callers(), times)
def test_another_secret_or_method_is_refused(
    secret: bytes, other_secret: bytes, method: str, other_method: str, caller: Caller, now: float
) -> None:
    headers = caller_metadata(secret, method, caller, now_s=now)
    if other_secret != secret:
        with pytest.raises(ForgedCaller):
            verify_caller(other_secret, method, headers, now_s=now)
    if other_method != method:
        with pytest.raises(ForgedCaller):
            verify_caller(secret, other_method, headers, now_s=now)


@given(secrets_, callers(), times, st.floats(FRESHNESS_S + 0.01, 1e6), st.booleans())
def test_stale_or_future_headers_are_refused(
    secret: bytes, caller: Caller, now: float, skew: float, ahead: bool
) -> None:
    headers = caller_metadata(secret, "/m", caller, now_s=now)
    with pytest.raises(ForgedCaller, match="off this clock"):
        verify_caller(secret, "/m", headers, now_s=now + (skew if ahead else -skew))


def test_absent_partial_and_repeated_headers_are_refused() -> None:
    secret = bytes(32)
    caller = Caller("us-fbi", "node", None, "peer", "ab" * 32)
    caller_header, mac_header = caller_metadata(secret, "/m", caller, now_s=100.0)
    with pytest.raises(ForgedCaller) as absent:
        verify_caller(secret, "/m", [("other", "x")], now_s=100.0)
    assert absent.value.reason == "absent"
    for headers in ([caller_header], [mac_header], [caller_header, caller_header, mac_header]):
        with pytest.raises(ForgedCaller) as refused:
            verify_caller(secret, "/m", headers, now_s=100.0)
        assert refused.value.reason != "absent"
    binary = [(caller_header[0], caller_header[1].encode()), mac_header]
    with pytest.raises(ForgedCaller):
        verify_caller(secret, "/m", binary, now_s=100.0)


def test_a_validly_signed_header_must_still_hold_a_well_formed_caller() -> None:
    """Defence in depth: a header MAC'd with the secret but naming no proper caller."""
    from services.core.forwarded_caller import _mac

    secret = bytes(range(32))
    for value in (
        '{"at_ms":1000,"fingerprint":"f","kind":"node","name":"x","node_id":"a","role":"peer"}',
        '{"at_ms":1000,"fingerprint":"f","kind":"king","name":null,"node_id":"a","role":"peer"}',
        '{"at_ms":true,"fingerprint":"f","kind":"node","name":null,"node_id":"a","role":"peer"}',
        '{"at_ms":1000,"kind":"node","name":null,"node_id":"a","role":"peer"}',
        "[1]",
        "not json",
    ):
        headers = [(CALLER_HEADER, value), (MAC_HEADER, _mac(secret, "/m", value))]
        with pytest.raises(ForgedCaller):
            verify_caller(secret, "/m", headers, now_s=1.0)


def test_the_internal_key_is_created_once_private_and_loaded(tmp_path: Path) -> None:
    created = ensure_internal_key(tmp_path)
    assert created == internal_key_path(tmp_path)
    assert stat.S_IMODE(created.stat().st_mode) == 0o600
    secret = load_internal_key(tmp_path)
    assert len(secret) == 32
    assert ensure_internal_key(tmp_path) is None
    assert load_internal_key(tmp_path) == secret
    created.chmod(0o644)
    with pytest.raises(FailedPrecondition, match="chmod 600"):
        load_internal_key(tmp_path)
    created.chmod(0o600)
    created.write_bytes(b"short")
    with pytest.raises(FailedPrecondition, match="32 bytes"):
        load_internal_key(tmp_path)
