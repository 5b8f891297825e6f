"""The gateway end to end: real TLS on loopback, a real Registry behind it, real PostgreSQL for
the audit log. Each refusal is checked for the status the client sees and its audit record."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hashex.v1 import (
    common_pb2,
    federation_pb2,
    federation_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from services.core import tls
from services.core.audit.chain import ChainVerifier
from services.core.trust import deny
from tests.gateway.harness import (
    CALL_TIMEOUT_S,
    OTHER_PEER,
    PEER,
    PULL_BATCHES,
    GatewayUnderTest,
    Pki,
    refused,
    request_digest,
    running_gateway,
)
from tests.signed_caller import WORKING_ROLES

STATS = "/hashex.v1.Registry/GetStats"
PULL = "/hashex.v1.Federation/Pull"


def _registry(channel: grpc.aio.Channel) -> registry_pb2_grpc.RegistryStub:
    return registry_pb2_grpc.RegistryStub(channel)


def _federation(channel: grpc.aio.Channel) -> federation_pb2_grpc.FederationStub:
    return federation_pb2_grpc.FederationStub(channel)


async def _pull(channel: grpc.aio.Channel, after_seq: int = 0) -> list[bytes]:
    stream = _federation(channel).Pull(
        federation_pb2.PullRequest(after_seq=after_seq), timeout=CALL_TIMEOUT_S
    )
    return [response.batch.body async for response in stream]


async def test_unit_calls_the_registry_and_the_call_is_audited(gateway: GatewayUnderTest) -> None:
    unit = gateway.unit()
    stats = await _registry(gateway.channel(unit)).GetStats(
        registry_pb2.GetStatsRequest(), timeout=CALL_TIMEOUT_S
    )
    assert stats.node_id == "gb-nca"
    [record] = await gateway.audit()
    entry = record.entry
    assert (record.seq, entry.method, entry.status) == (1, STATS, "OK")
    assert entry.caller == "spiffe://hashex/node/gb-nca/unit/ceop-desk"
    assert (entry.role, entry.fingerprint) == ("unit", unit.fingerprint)
    assert (entry.request_messages, entry.response_messages) == (1, 1)
    assert entry.request_digest == request_digest(b"")  # GetStatsRequest serialises to nothing


async def test_lookup_is_audited_by_digest_never_by_the_hashes_asked(
    gateway: GatewayUnderTest,
) -> None:
    md5 = common_pb2.Signal(algorithm=common_pb2.HASH_ALGORITHM_MD5, value="ab" * 16)
    request = registry_pb2.LookupRequest(signals=[md5])
    await _registry(gateway.channel(gateway.unit())).Lookup(request, timeout=CALL_TIMEOUT_S)
    [record] = await gateway.audit()
    assert record.entry.request_digest == request_digest(request.SerializeToString())
    assert "ab" * 16 not in repr(record)


async def test_client_without_certificate_is_refused_at_the_handshake(
    gateway: GatewayUnderTest,
) -> None:
    channel = gateway.channel(None)
    error = await refused(lambda: _registry(channel).GetStats(registry_pb2.GetStatsRequest()))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    # Refused by TLS before any handler runs: nothing reaches the gateway to audit.
    assert await gateway.audit() == []


async def test_certificate_from_an_unknown_ca_is_refused_at_the_handshake(
    gateway: GatewayUnderTest,
) -> None:
    stranger = tls.issue_node_certificate(tls.create_node_ca(node_id="xx-rogue"))
    channel = gateway.channel(stranger)
    error = await refused(lambda: _pull(channel))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert await gateway.audit() == []


async def test_peer_ca_cannot_mint_a_certificate_for_another_peer(
    gateway: GatewayUnderTest, pki: Pki
) -> None:
    # Signed by us-fbi's (pinned, trusted) CA, but claiming to be de-bka.
    impostor = tls.issue_node_certificate(tls.NodeCa(OTHER_PEER, pki.peer.material))
    channel = gateway.channel(impostor)
    error = await refused(lambda: _pull(channel))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not issued by the CA this node pinned" in (error.details() or "")
    assert gateway.federation.callers == []
    [record] = await gateway.audit()
    assert record.entry.status == "UNAUTHENTICATED"
    assert record.entry.caller == f"spiffe://hashex/node/{OTHER_PEER}"
    assert (record.entry.role, record.entry.fingerprint) == ("none", impostor.fingerprint)
    assert record.entry.response_messages == 0


async def test_revocation_takes_effect_on_the_next_call_without_restart(
    gateway: GatewayUnderTest,
) -> None:
    peer = gateway.peer()
    channel = gateway.channel(peer)
    assert len(await _pull(channel)) == PULL_BATCHES
    deny(gateway.peers_dir, peer.fingerprint, "key seized")
    error = await refused(lambda: _pull(channel))  # same connection, next call
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (error.details() or "")
    first, second = await gateway.audit()
    assert (first.entry.status, first.entry.response_messages) == ("OK", PULL_BATCHES)
    assert (second.entry.status, second.entry.fingerprint) == ("UNAUTHENTICATED", peer.fingerprint)


async def test_unit_may_not_call_a_peer_only_method(gateway: GatewayUnderTest) -> None:
    channel = gateway.channel(gateway.unit())
    error = await refused(lambda: _pull(channel))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert gateway.federation.callers == []
    [record] = await gateway.audit()
    assert (record.entry.method, record.entry.role) == (PULL, "unit")
    assert (record.entry.status, record.entry.request_messages) == ("PERMISSION_DENIED", 1)


async def test_peer_may_not_call_the_registry(gateway: GatewayUnderTest) -> None:
    channel = gateway.channel(gateway.peer())
    error = await refused(
        lambda: _registry(channel).GetStats(registry_pb2.GetStatsRequest(), timeout=5)
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    [record] = await gateway.audit()
    assert (record.entry.role, record.entry.status) == ("peer", "PERMISSION_DENIED")


async def test_peer_pulls_and_the_servicer_sees_who_is_calling(gateway: GatewayUnderTest) -> None:
    peer = gateway.peer()
    bodies = await _pull(gateway.channel(peer), after_seq=7)
    assert bodies == [f"{PEER}:{7 + n}".encode() for n in range(PULL_BATCHES)]
    assert {c.uri for c in gateway.federation.callers} == {f"spiffe://hashex/node/{PEER}"}
    assert {(c.role, c.fingerprint) for c in gateway.federation.callers} == {
        ("peer", peer.fingerprint)
    }
    [record] = await gateway.audit()
    request = federation_pb2.PullRequest(after_seq=7).SerializeToString()
    assert record.entry.request_digest == request_digest(request)
    assert (record.entry.request_messages, record.entry.response_messages) == (1, PULL_BATCHES)


async def test_streams_in_both_directions_are_counted(gateway: GatewayUnderTest) -> None:
    md5 = common_pb2.Signal(algorithm=common_pb2.HASH_ALGORITHM_MD5, value="cd" * 16)
    requests = [
        registry_pb2.LookupStreamRequest(
            batch_id=str(n), lookup=registry_pb2.LookupRequest(signals=[md5])
        )
        for n in range(3)
    ]
    stream = _registry(gateway.channel(gateway.unit())).LookupStream(
        iter(requests), timeout=CALL_TIMEOUT_S
    )
    assert [r.batch_id async for r in stream] == ["0", "1", "2"]
    [record] = await gateway.audit()
    assert (record.entry.request_messages, record.entry.response_messages) == (3, 3)
    raw = [r.SerializeToString() for r in requests]
    assert (record.entry.request_digest, record.entry.status) == (request_digest(*raw), "OK")


async def test_health_is_open_to_any_authenticated_caller(gateway: GatewayUnderTest) -> None:
    for identity in (gateway.unit(), gateway.peer()):
        stub = health_pb2_grpc.HealthStub(gateway.channel(identity))
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert [r.entry.role for r in await gateway.audit()] == ["unit", "peer"]


async def test_unknown_method_is_refused_and_audited(gateway: GatewayUnderTest) -> None:
    channel = gateway.channel(gateway.unit())
    call = channel.unary_unary("/hashex.v1.Nothing/Here")
    error = await refused(lambda: call(b"", timeout=CALL_TIMEOUT_S))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    [record] = await gateway.audit()
    assert (record.entry.method, record.entry.status) == (
        "/hashex.v1.Nothing/Here",
        error.code().name,
    )


async def test_oversized_requests_are_refused_before_parsing(
    db_pool: Any, tmp_path: Path, pki: Pki
) -> None:
    async with running_gateway(db_pool, tmp_path, pki, max_request_bytes=2048) as gateway:
        registry = _registry(gateway.channel(gateway.unit()))
        big = registry_pb2.LookupRequest(
            signals=[
                common_pb2.Signal(algorithm=common_pb2.HASH_ALGORITHM_MD5, value=f"{n:032x}")
                for n in range(100)
            ]
        )
        assert big.ByteSize() > 2048
        error = await refused(lambda: registry.Lookup(big, timeout=CALL_TIMEOUT_S))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 2048" in (error.details() or "")
        md5 = common_pb2.Signal(algorithm=common_pb2.HASH_ALGORITHM_MD5, value="ef" * 16)
        small = registry_pb2.SubmitMediaRequest(
            media=[registry_pb2.MediaSubmission(media_id="m1", signals=[md5])]
        )
        huge = registry_pb2.SubmitMediaRequest(
            media=[registry_pb2.MediaSubmission(media_id="x" * 100) for _ in range(30)]
        )
        error = await refused(lambda: registry.SubmitMedia(iter([small, huge]), timeout=10))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        lookup, submit = await gateway.audit()
        assert (lookup.entry.status, lookup.entry.request_messages) == ("RESOURCE_EXHAUSTED", 1)
        assert lookup.entry.request_digest == request_digest(big.SerializeToString())
        assert (submit.entry.status, submit.entry.request_messages) == ("RESOURCE_EXHAUSTED", 2)


async def test_flood_beyond_the_rate_limit_is_refused_and_audited(
    db_pool: Any, tmp_path: Path, pki: Pki
) -> None:
    async with running_gateway(
        db_pool, tmp_path, pki, rate_limit_hashes_per_s=1.0, rate_limit_hashes_burst=3
    ) as gateway:
        registry = _registry(gateway.channel(gateway.unit()))

        async def stats() -> Any:
            return await registry.GetStats(registry_pb2.GetStatsRequest(), timeout=5)

        for _ in range(3):
            await stats()
        error = await refused(stats)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limit" in (error.details() or "")
        # Another caller has its own budget.
        other = _registry(gateway.channel(gateway.unit("other-desk")))
        await other.GetStats(registry_pb2.GetStatsRequest(), timeout=5)
        gateway.clock.now += 1.0
        await stats()
        statuses = [r.entry.status for r in await gateway.audit()]
        assert statuses == ["OK", "OK", "OK", "RESOURCE_EXHAUSTED", "OK", "OK"]


def _md5_lookup(count: int, start: int = 0) -> registry_pb2.LookupRequest:
    return registry_pb2.LookupRequest(
        signals=[
            common_pb2.Signal(algorithm=common_pb2.HASH_ALGORITHM_MD5, value=f"{n:032x}")
            for n in range(start, start + count)
        ]
    )


async def test_the_rate_limit_charges_hashes_not_calls(
    db_pool: Any, tmp_path: Path, pki: Pki
) -> None:
    """One caller's 10,000-hash lookups once cost it what one-hash calls did: one token each."""
    async with running_gateway(
        db_pool, tmp_path, pki, rate_limit_hashes_per_s=100.0, rate_limit_hashes_burst=1000
    ) as gateway:
        registry = _registry(gateway.channel(gateway.unit()))
        await registry.Lookup(_md5_lookup(600), timeout=CALL_TIMEOUT_S)  # 601 of 1,000
        error = await refused(lambda: registry.Lookup(_md5_lookup(600), timeout=CALL_TIMEOUT_S))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 100 hashes per second (bursts of 1000)" in (error.details() or "")
        other = _registry(gateway.channel(gateway.unit("other-desk")))
        await other.Lookup(_md5_lookup(600), timeout=CALL_TIMEOUT_S)  # a budget of its own
        too_big = await refused(lambda: other.Lookup(_md5_lookup(2000), timeout=CALL_TIMEOUT_S))
        assert "send smaller batches" in (too_big.details() or "")
        gateway.clock.now += 6.0  # 600 hashes refilled
        await registry.Lookup(_md5_lookup(500), timeout=CALL_TIMEOUT_S)
        statuses = [r.entry.status for r in await gateway.audit()]
        assert statuses == ["OK", "RESOURCE_EXHAUSTED", "OK", "RESOURCE_EXHAUSTED", "OK"]


async def test_one_caller_holds_at_most_its_share_of_calls_in_flight(
    db_pool: Any, tmp_path: Path, pki: Pki
) -> None:
    async with running_gateway(db_pool, tmp_path, pki, max_calls_in_flight_per_caller=2) as gateway:
        stub = _federation(gateway.channel(gateway.peer()))
        waiting = [
            asyncio.ensure_future(
                stub.PeerLookup(federation_pb2.PeerLookupRequest(), timeout=CALL_TIMEOUT_S)
            )
            for _ in range(2)
        ]
        await gateway.federation.callers_at_least(2)
        third = await refused(
            lambda: stub.PeerLookup(federation_pb2.PeerLookupRequest(), timeout=CALL_TIMEOUT_S)
        )
        assert third.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 2 calls of one caller run at a time" in (third.details() or "")
        gateway.federation.release.set()
        await asyncio.gather(*waiting)
        await stub.PeerLookup(federation_pb2.PeerLookupRequest(), timeout=CALL_TIMEOUT_S)


async def test_calls_longer_than_the_deadline_are_ended(
    db_pool: Any, tmp_path: Path, pki: Pki
) -> None:
    async with running_gateway(db_pool, tmp_path, pki, call_deadline_s=0.3) as gateway:
        stub = _federation(gateway.channel(gateway.peer()))
        error = await refused(
            lambda: stub.PeerLookup(federation_pb2.PeerLookupRequest(), timeout=CALL_TIMEOUT_S)
        )
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "0.3 s" in (error.details() or "")
        [record] = await gateway.audit()
        assert (record.entry.status, record.entry.response_messages) == ("DEADLINE_EXCEEDED", 0)
        assert record.entry.duration_ms >= 300


async def test_peer_pinned_while_running_is_trusted_from_its_next_connection(
    db_pool: Any, tmp_path: Path, pki: Pki
) -> None:
    async with running_gateway(db_pool, tmp_path, pki, pinned=(pki.peer,)) as gateway:
        newcomer = tls.issue_node_certificate(pki.other_peer)
        channel = gateway.channel(newcomer)
        assert (await refused(lambda: _pull(channel))).code() == grpc.StatusCode.UNAVAILABLE
        await gateway.pin(pki.other_peer, tmp_path / "keys-late")
        assert len(await _pull(gateway.channel(newcomer))) == PULL_BATCHES
        [record] = await gateway.audit()
        assert record.entry.caller == f"spiffe://hashex/node/{OTHER_PEER}"


@pytest.mark.parametrize("kind", ["unit", "operator"])
async def test_units_and_operators_of_a_peer_have_no_role_here(
    gateway: GatewayUnderTest, pki: Pki, kind: str
) -> None:
    if kind == "unit":
        identity = tls.issue_unit_certificate(pki.peer, unit="desk", roles=WORKING_ROLES)
    else:
        identity = tls.issue_operator_certificate(pki.peer, name="ops")
    error = await refused(lambda: _pull(gateway.channel(identity)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    [record] = await gateway.audit()
    assert (record.entry.role, record.entry.caller) == (
        "none",
        f"spiffe://hashex/node/{PEER}/{kind}/" + ("desk" if kind == "unit" else "ops"),
    )


async def test_a_stream_the_client_cancels_is_audited_as_cancelled(
    gateway: GatewayUnderTest,
) -> None:
    stub = health_pb2_grpc.HealthStub(gateway.channel(gateway.unit()))
    watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    records = await gateway.audit_until(1)
    assert (records[0].entry.status, records[0].entry.response_messages) == ("CANCELLED", 1)


async def test_health_list_answers_through_the_gateway(gateway: GatewayUnderTest) -> None:
    stub = health_pb2_grpc.HealthStub(gateway.channel(gateway.unit()))
    listed = await stub.List(health_pb2.HealthListRequest(), timeout=CALL_TIMEOUT_S)
    assert listed.statuses[""].status == health_pb2.HealthCheckResponse.SERVING
    assert len(listed.statuses) > 1  # the server and each service it serves
    assert all(s.status == health_pb2.HealthCheckResponse.SERVING for s in listed.statuses.values())


async def test_events_recorded_by_the_node_join_the_same_chain(gateway: GatewayUnderTest) -> None:
    await _registry(gateway.channel(gateway.unit())).GetStats(
        registry_pb2.GetStatsRequest(), timeout=CALL_TIMEOUT_S
    )
    [call] = await gateway.audit()
    event = replace(call.entry, caller=f"spiffe://hashex/node/{PEER}", status="BATCH_REJECTED")
    stored = await gateway.running.record(event)
    assert (stored.seq, stored.previous_digest) == (2, call.digest)
    verifier = ChainVerifier()
    assert [verifier.check(r) for r in await gateway.audit()] == [None, None]
