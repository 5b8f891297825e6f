"""Security of whole federated nodes on loopback with real mutual TLS: each attack is refused
with the right status, leaves a record in the refusing node's audit log, and applies nothing.

Batch-level attacks come from a rogue peer: a real gRPC server that presents the origin's real
node certificate (as a stolen key would let it) and serves Federation.Pull with batches it got
genuinely from the real origin and then tampered with; the receiver is pointed at it by
re-pinning the origin's (genuinely signed) card with the rogue's endpoint. Only the signed
batches themselves can then protect the receiver. Call-level attacks go through a whole node's
gateway. Checks at the level of a bare gateway live in tests/gateway and are not repeated here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from hashex.v1 import federation_pb2, federation_pb2_grpc, registry_pb2, registry_pb2_grpc
from services.cli import exit_codes
from services.cli.main import main as hashex_main
from services.core import tls
from tests.federation.harness import Agency, cli, federation
from tests.federation.rogue import (
    ORIGIN,
    RECEIVER,
    THIRD,
    ReplayFirstBatch,
    flip_a_body_byte,
    gateway_channel,
    rogue_origin,
    sign_with_an_unknown_key,
    unchanged,
)
from tests.registry.node_harness import md5, submission
from tests.signed_caller import WORKING_ROLES
from tests.waiting import wait_for

PULL = "/hashex.v1.Federation/Pull"
CALL_TIMEOUT_S = 10.0
WAIT_S = 30.0
SignedBatches = list[federation_pb2.SignedBatch]


# --- reading what the nodes say ------------------------------------------------------------


async def audit_log(agency: Agency, *, after_seq: int = 0) -> list[dict[str, Any]]:
    """The node's audit records, refusals counted in open windows included (stored now)."""
    await agency.running.gateway.recorder.flush()
    rows = await agency.running.database.pool.fetch(
        "SELECT seq, caller, fingerprint, role, method, status, request_messages, "
        "response_messages, calls FROM audit_log WHERE seq > $1 ORDER BY seq",
        after_seq,
    )
    return [dict(r) for r in rows]


async def last_audit_seq(agency: Agency) -> int:
    return await agency.row_count("SELECT coalesce(max(seq), 0) FROM audit_log")


async def peer_status(agency: Agency, peer_id: str) -> federation_pb2.PeerSyncStatus:
    """The peer's line in the node's own Admin.GetSyncStatus."""
    [peer] = [p for p in (await agency.status()).peers if p.peer_id == peer_id]
    return peer


async def held_media(agency: Agency, origin: str) -> int:
    """Every media row of `origin` the node holds, retracted or not."""
    return await agency.row_count("SELECT count(*) FROM media WHERE origin = $1", origin)


async def refusal(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def drain(stream: Any, into: list[Any]) -> None:
    async for response in stream:
        into.append(response)


async def rejected_with(receiver: Agency, reason: str) -> bool:
    peer = await peer_status(receiver, ORIGIN)
    return peer.rejected_batches > 0 and reason in peer.last_error


async def assert_rejection_audited(receiver: Agency, reason: str, *, after_seq: int) -> None:
    """The receiver's audit chain records each rejected batch against the origin, as a Pull
    whose status names the reason (the puller's own call went out, so no gateway recorded it).
    The origin's genuine pulls from the receiver's gateway are in the same log, as OK calls."""
    found = [
        r
        for r in await audit_log(receiver, after_seq=after_seq)
        if r["status"].startswith("BATCH_REJECTED")
    ]
    assert found, "no audit record of the rejected batch"
    assert {(r["caller"], r["role"], r["method"], r["status"]) for r in found} == {
        (tls.node_uri(ORIGIN), "peer", PULL, f"BATCH_REJECTED:{reason}")
    }


# --- batch-level attacks, at the receiving node ----------------------------------------------


@pytest.mark.parametrize(
    ("pull_as", "tamper", "reason"),
    [
        (RECEIVER, flip_a_body_byte, "bad_signature"),
        (THIRD, unchanged, "wrong_recipient"),  # genuinely signed, but for DE
        (RECEIVER, sign_with_an_unknown_key, "unknown_key"),
    ],
    ids=["forged-signature", "another-recipient", "unknown-key"],
)
async def test_a_tampered_batch_is_rejected_audited_and_applies_nothing(
    pg_server: Any,
    tmp_path: Path,
    pull_as: str,
    tamper: Callable[[SignedBatches], SignedBatches],
    reason: str,
) -> None:
    async with (
        federation([RECEIVER, ORIGIN, THIRD], tmp_path, pg_server, start=False) as fed,
        rogue_origin(fed, pull_as=pull_as, tamper=tamper) as rogue,
    ):
        receiver, origin = fed[RECEIVER], fed[ORIGIN]
        await origin.start()
        await receiver.start()  # DE stays down: only its certificate is used
        await origin.submit(submission("u1", md5(b"1" * 16)), submission("u2", md5(b"2" * 16)))
        await wait_for(
            lambda: rejected_with(receiver, reason), WAIT_S, f"no {reason} rejection reported"
        )
        assert rogue.served > 0
        peer = await peer_status(receiver, ORIGIN)
        assert (peer.cursor_seq, peer.applied_entries) == (0, 0)
        assert await held_media(receiver, ORIGIN) == 0
        await assert_rejection_audited(receiver, reason, after_seq=0)


async def test_a_replayed_batch_is_rejected_audited_and_applies_nothing(
    pg_server: Any, tmp_path: Path
) -> None:
    replay = ReplayFirstBatch()
    async with (
        federation([RECEIVER, ORIGIN], tmp_path, pg_server, start=False) as fed,
        rogue_origin(fed, pull_as=RECEIVER, tamper=replay),
    ):
        receiver, origin = fed[RECEIVER], fed[ORIGIN]
        await origin.start()
        await receiver.start()
        # Genuine batches pass first: the media arrives, then its retraction.
        await origin.submit(submission("u1", md5(b"1" * 16)))

        async def arrived() -> bool:
            return await receiver.media_ids(ORIGIN) == {"u1"}

        await wait_for(arrived, WAIT_S, "the genuine batch did not arrive")
        await origin.registry().RetractMedia(registry_pb2.RetractMediaRequest(media_ids=["u1"]))
        head = (await origin.status()).local_last_seq

        async def caught_up() -> bool:
            return (await peer_status(receiver, ORIGIN)).cursor_seq == head

        await wait_for(caught_up, WAIT_S, "the retraction did not arrive")
        assert await receiver.media_ids(ORIGIN) == set()
        assert (await peer_status(receiver, ORIGIN)).rejected_batches == 0  # relayed intact
        mark = await last_audit_seq(receiver)

        replay.armed = True  # the next pull gets the first batch again
        await wait_for(
            lambda: rejected_with(receiver, "replayed"), WAIT_S, "no replay rejection reported"
        )
        assert (await peer_status(receiver, ORIGIN)).cursor_seq == head
        assert await receiver.media_ids(ORIGIN) == set()  # u1 is still retracted
        assert await held_media(receiver, ORIGIN) == 1
        await assert_rejection_audited(receiver, "replayed", after_seq=mark)


# --- call-level attacks, through a node's gateway ------------------------------------------


@asynccontextmanager
async def lone_node(tmp_path: Path, pg: Any, node_toml: str = "") -> AsyncIterator[Agency]:
    """GB running with `node_toml` added to its configuration; US is pinned but stays down, so
    every record in GB's audit log comes from the calls the test makes."""
    async with federation([RECEIVER, ORIGIN], tmp_path, pg, start=False) as fed:
        node = fed[RECEIVER]
        with (node.data_dir / "node.toml").open("a", encoding="utf-8") as config:
            config.write(node_toml)
        await node.start()
        yield node


async def test_a_revoked_peer_certificate_is_refused_and_replication_stops(
    pg_server: Any, tmp_path: Path
) -> None:
    async with federation([RECEIVER, ORIGIN], tmp_path, pg_server) as fed:
        node, peer = fed[RECEIVER], fed[ORIGIN]
        await node.submit(submission("g1", md5(b"1" * 16)))
        await fed.converged()
        assert await peer.media_ids(RECEIVER) == {"g1"}
        cursor = (await peer_status(peer, RECEIVER)).cursor_seq
        peer_cert = peer.config.tls_dir / "node.pem"
        revoke = ("peer", "revoke", "--cert", peer_cert, "--reason", "seized")
        cli(*revoke, "--data-dir", node.data_dir)

        async def cut_and_refused() -> list[dict[str, Any]]:
            return [
                r
                for r in await audit_log(node)
                if r["caller"] == tls.node_uri(ORIGIN) and r["status"] == "UNAUTHENTICATED"
            ]

        async def refused_pulls() -> list[dict[str, Any]]:
            """New pulls refused on arrival (not the held pull the revocation cut)."""
            return [r for r in await cut_and_refused() if r["role"] == "none"]

        async def peer_sees_refusal() -> bool:
            return "UNAUTHENTICATED" in (await peer_status(peer, RECEIVER)).last_error

        await wait_for(peer_sees_refusal, WAIT_S, "the revoked peer was not refused")
        assert "revoked" in (await peer_status(peer, RECEIVER)).last_error
        # The pull the peer held open was cut, and recorded so, as the peer it was until then.
        cut = [r for r in await cut_and_refused() if r["role"] == "peer"]
        assert [r["method"] for r in cut] == [PULL]
        await wait_for(refused_pulls, WAIT_S, "the revoked peer's new pull was not refused")
        refused = await refused_pulls()
        fingerprint = tls.certificate_fingerprint(peer_cert.read_bytes())
        assert refused
        assert all(
            (r["method"], r["fingerprint"], r["role"], r["response_messages"])
            == (PULL, fingerprint, "none", 0)
            for r in refused
        )

        # New records stop flowing: the peer tries twice more after one exists, and gets nothing.
        await node.submit(submission("g2", md5(b"2" * 16)))
        seen = sum(r["calls"] for r in refused)

        async def retried_twice() -> bool:  # refusals of one caller aggregate: count calls
            return sum(r["calls"] for r in await refused_pulls()) >= seen + 2

        await wait_for(retried_twice, WAIT_S, "the revoked peer stopped retrying")
        assert await peer.media_ids(RECEIVER) == {"g1"}
        assert (await peer_status(peer, RECEIVER)).cursor_seq == cursor


async def test_a_unit_certificate_may_not_pull(pg_server: Any, tmp_path: Path) -> None:
    async with lone_node(tmp_path, pg_server) as node:
        await node.submit(submission("g1", md5(b"1" * 16)))  # something a pull would carry
        stub = federation_pb2_grpc.FederationStub(node.unit_channel("alice"))
        received: list[federation_pb2.PullResponse] = []
        stream = stub.Pull(federation_pb2.PullRequest(), timeout=CALL_TIMEOUT_S)
        error = await refusal(drain(stream, received))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert received == []
        submitted, record = await audit_log(node)
        # The submission came over the node's admin socket: audited like any call.
        assert (submitted["caller"], submitted["role"], submitted["status"]) == (
            tls.operator_uri(RECEIVER, "admin-socket"),
            "admin",
            "OK",
        )
        assert (record["caller"], record["role"], record["method"]) == (
            tls.unit_uri(RECEIVER, "alice"),
            "unit",
            PULL,
        )
        assert (record["status"], record["response_messages"]) == ("PERMISSION_DENIED", 0)


def signals(count: int) -> list[Any]:
    return [md5(i.to_bytes(16, "big")) for i in range(count)]


async def test_an_oversized_request_is_refused_and_applies_nothing(
    pg_server: Any, tmp_path: Path
) -> None:
    async with lone_node(tmp_path, pg_server, "max_request_bytes = 2048\n") as node:
        channel = node.unit_channel()
        units = federation_pb2_grpc.UnitsStub(channel)
        small = registry_pb2.LookupRequest(signals=signals(4))
        await units.FederatedLookup(federation_pb2.FederatedLookupRequest(lookup=small))
        large = registry_pb2.LookupRequest(signals=signals(200))
        assert large.ByteSize() > 2048
        lookup = units.FederatedLookup(federation_pb2.FederatedLookupRequest(lookup=large))
        error = await refusal(lookup)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # A submission just as large is refused before it is parsed: nothing is stored.
        media = [submission(f"m{i}", s) for i, s in enumerate(signals(100))]
        request = registry_pb2.SubmitMediaRequest(media=media)
        submit = registry_pb2_grpc.RegistryStub(channel).SubmitMedia(iter([request]))
        assert (await refusal(submit)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await node.row_count("SELECT count(*) FROM media") == 0
        ok, looked_up, submitted = await audit_log(node)
        assert ok["status"] == "OK"
        unit = tls.unit_uri(RECEIVER, "alice")
        assert (looked_up["caller"], looked_up["method"], looked_up["status"]) == (
            unit,
            "/hashex.v1.Units/FederatedLookup",
            "RESOURCE_EXHAUSTED",
        )
        assert (submitted["caller"], submitted["method"], submitted["status"]) == (
            unit,
            "/hashex.v1.Registry/SubmitMedia",
            "RESOURCE_EXHAUSTED",
        )
        assert looked_up["response_messages"] == submitted["response_messages"] == 0


async def test_a_flood_beyond_the_rate_limit_is_refused_and_applies_nothing(
    pg_server: Any, tmp_path: Path
) -> None:
    config = "rate_limit_hashes_per_s = 2.0\nrate_limit_hashes_burst = 10\n"
    async with lone_node(tmp_path, pg_server, config) as node:
        registry = registry_pb2_grpc.RegistryStub(node.unit_channel())

        def one(i: int) -> Iterator[registry_pb2.SubmitMediaRequest]:
            media = submission(f"flood-{i}", md5(i.to_bytes(16, "big")))
            return iter([registry_pb2.SubmitMediaRequest(media=[media])])

        calls = [registry.SubmitMedia(one(i), timeout=CALL_TIMEOUT_S) for i in range(20)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        accepted = {f"flood-{i}" for i, o in enumerate(outcomes) if not isinstance(o, Exception)}
        errors = [o for o in outcomes if isinstance(o, Exception)]
        assert all(isinstance(e, grpc.aio.AioRpcError) for e in errors), errors
        codes = {e.code() for e in errors if isinstance(e, grpc.aio.AioRpcError)}
        assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        # The burst admits at most 5 (each call costs its hash and itself) plus a refill of one a
        # second; under load the in-flight cap (8 per caller, refused with the same code) may
        # take some of the burst too, so only bounds hold: some admitted, the rest refused.
        assert 1 <= len(accepted) <= 8 and len(errors) == 20 - len(accepted)
        # Only the admitted calls stored anything; every call has its record.
        assert await node.media_ids(RECEIVER) == accepted
        records = await audit_log(node)
        assert {(r["caller"], r["method"]) for r in records} == {
            (tls.unit_uri(RECEIVER, "alice"), "/hashex.v1.Registry/SubmitMedia")
        }
        # Refusals of one caller within a window aggregate into records with a count.
        calls = {status: 0 for status in ("OK", "RESOURCE_EXHAUSTED")}
        for r in records:
            calls[r["status"]] += r["calls"]
        assert calls == {"OK": len(accepted), "RESOURCE_EXHAUSTED": len(errors)}
        assert sum(r["status"] == "RESOURCE_EXHAUSTED" for r in records) <= 2


@pytest.mark.parametrize("presented", ["no certificate", "unknown CA"])
async def test_a_caller_outside_the_trusted_cas_is_refused_at_the_handshake(
    pg_server: Any, tmp_path: Path, presented: str
) -> None:
    async with lone_node(tmp_path, pg_server) as node:
        identity = None
        if presented == "unknown CA":
            identity = tls.issue_node_certificate(tls.create_node_ca(node_id="xx-rogue"))
        stub = federation_pb2_grpc.FederationStub(gateway_channel(node, identity))
        received: list[federation_pb2.PullResponse] = []
        stream = stub.Pull(federation_pb2.PullRequest(), timeout=CALL_TIMEOUT_S)
        error = await refusal(drain(stream, received))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert received == []
        # grpcio refuses such a connection in the TLS handshake and never hands it to a
        # handler, so the gateway cannot audit it: the audit log stays unchanged. A trusted
        # caller right after is served and recorded, so the gateway was up and auditing.
        assert await audit_log(node) == []
        await registry_pb2_grpc.RegistryStub(node.unit_channel()).GetStats(
            registry_pb2.GetStatsRequest(), timeout=CALL_TIMEOUT_S
        )
        assert [r["status"] for r in await audit_log(node)] == ["OK"]


async def test_sync_commands_take_the_gateway_with_a_certificate(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hashex sync status --cert` dialled the plaintext port whatever it was given, and then
    said "is it running?". It takes the gateway over mutual TLS: an operator is answered, a
    unit is refused as a unit (the admin methods are an operator's)."""
    async with lone_node(tmp_path, pg_server) as node:
        config = node.config
        ca = tls.load_node_ca(
            node_id=node.node_id,
            certificate_path=config.tls_dir / "ca.pem",
            key_path=config.tls_dir / "ca.key",
        )
        folder = tmp_path / "certs"
        folder.mkdir()
        (folder / "ca.pem").write_bytes(ca.certificate_pem)
        for name, issued in (
            ("ops", tls.issue_operator_certificate(ca, name="ops")),
            ("desk", tls.issue_unit_certificate(ca, unit="desk", roles=WORKING_ROLES)),
        ):
            tls.write_certified_key(
                issued, certificate_path=folder / f"{name}.pem", key_path=folder / f"{name}.key"
            )
        gateway = ["--gateway", node.running.gateway_address, "--data-dir", str(node.data_dir)]
        status = ["sync", "status", "--json", *gateway]
        capsys.readouterr()
        code = await asyncio.to_thread(hashex_main, [*status, "--cert", str(folder / "ops.pem")])
        assert code == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["node_id"] == RECEIVER
        code = await asyncio.to_thread(hashex_main, [*status, "--cert", str(folder / "desk.pem")])
        refused = capsys.readouterr().err
        assert (
            code == exit_codes.REFUSED
            and "PERMISSION_DENIED" in refused
            and "is it running" not in refused
        )
        [*_, record] = await audit_log(node)
        assert (record["caller"], record["status"]) == (
            tls.unit_uri(RECEIVER, "desk"),
            "PERMISSION_DENIED",
        )
