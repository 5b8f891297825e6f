"""The node's services run apart, as on Kubernetes: the registry (`start_registry`), sync alone
(`hashex sync run`) and the gateway alone (`hashex gateway serve`), each with its own pool on one
fresh database, talking over plaintext loopback like an internal network. Units and peers call
the gateway over mutual TLS; it forwards raw bytes, carries the verified caller to sync in MAC'd
headers, and writes the audit record itself."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hashex.v1 import federation_pb2, federation_pb2_grpc, registry_pb2, registry_pb2_grpc
from services.core import tls
from services.core.audit.chain import AuditRecord
from services.core.caller import Caller
from services.core.config import NodeConfig, load_config
from services.core.forwarded_caller import caller_metadata, load_internal_key
from services.core.secretfile import write_secret
from services.gateway.standalone import RunningGatewayService, start_gateway_service
from services.registry.app import RunningRegistry, start_registry
from services.sync.standalone import RunningSyncService, start_sync_service
from tests.cli.node_process import hashex
from tests.federation.harness import FAST_SYNC, cli, init_agency
from tests.gateway.harness import request_digest
from tests.registry.node_harness import md5, submission
from tests.signed_caller import WORKING_ROLES, signed_channel

OWN, PEER = "gb-nca", "us-fbi"
MAX_REQUEST_BYTES = 65_536
TIMEOUT_S = 10.0
PULL = "/hashex.v1.Federation/Pull"


@dataclass
class Apart:
    config: NodeConfig
    registry: RunningRegistry
    sync: RunningSyncService
    gateway: RunningGatewayService
    ca: tls.NodeCa
    peer_identity: tls.CertifiedKey
    channels: list[grpc.aio.Channel]

    def gateway_channel(self, identity: tls.CertifiedKey) -> grpc.aio.Channel:
        credentials = tls.channel_credentials(
            identity, trusted_server_cas=[self.ca.certificate_pem]
        )
        return self._keep(grpc.aio.secure_channel(self.gateway.address, credentials))

    def unit(self) -> registry_pb2_grpc.RegistryStub:
        identity = tls.issue_unit_certificate(self.ca, unit="alice", roles=WORKING_ROLES)
        return registry_pb2_grpc.RegistryStub(self.gateway_channel(identity))

    def peer(self) -> federation_pb2_grpc.FederationStub:
        return federation_pb2_grpc.FederationStub(self.gateway_channel(self.peer_identity))

    def sync_port(self) -> federation_pb2_grpc.FederationStub:
        """Straight to sync's internal port, as anyone on the internal network could."""
        return federation_pb2_grpc.FederationStub(
            self._keep(grpc.aio.insecure_channel(self.sync.address))
        )

    def registry_port(self) -> registry_pb2_grpc.RegistryStub:
        """Straight to the registry's internal port, with a caller signed as the gateway would."""
        return registry_pb2_grpc.RegistryStub(
            self._keep(signed_channel(self.registry.address, self.config))
        )

    def _keep(self, channel: grpc.aio.Channel) -> grpc.aio.Channel:
        self.channels.append(channel)
        return channel

    async def audit_after(self, seq: int, count: int) -> list[AuditRecord]:
        """The gateway's records after `seq`, once there are `count` of them."""
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            records = [r async for r in self.gateway.gateway.audit.records(after_seq=seq)]
            if len(records) >= count:
                return records
            assert time.monotonic() < deadline, f"{len(records)} audit records, not {count}"
            await asyncio.sleep(0.02)  # polling the database: there is nothing to wait on

    async def last_audit_seq(self) -> int:
        records = [r async for r in self.gateway.gateway.audit.records()]
        return records[-1].seq if records else 0


@pytest.fixture(scope="module")
async def apart(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Apart]:
    root = tmp_path_factory.mktemp("apart")
    own_dir, peer_dir = root / OWN, root / PEER
    init_agency(own_dir, OWN, extra_config=FAST_SYNC + f"max_request_bytes = {MAX_REQUEST_BYTES}\n")
    init_agency(peer_dir, PEER)
    cli("peer", "card", "--out", root / "peer.card", "--data-dir", peer_dir)
    cli("peer", "add", root / "peer.card", "--policy", "share-all", "--data-dir", own_dir)
    name = await pg_server.create_database()
    config = load_config(own_dir, env={"DATABASE_URL": pg_server.url_of(name)})
    registry = await start_registry(config)
    sync = await start_sync_service(
        config, registry_address=registry.address, listen="127.0.0.1:0", run_pullers=False
    )
    gateway = await start_gateway_service(
        config, registry_address=registry.address, sync_address=sync.address
    )
    ca = tls.load_node_ca(
        node_id=OWN,
        certificate_path=config.tls_dir / "ca.pem",
        key_path=config.tls_dir / "ca.key",
    )
    peer_identity = tls.load_certified_key(
        certificate_path=peer_dir / "tls" / "node.pem", key_path=peer_dir / "tls" / "node.key"
    )
    running = Apart(config, registry, sync, gateway, ca, peer_identity, [])
    try:
        yield running
    finally:
        for channel in running.channels:
            await channel.close()
        await gateway.stop()
        await sync.stop()
        await registry.stop()
        await pg_server.drop_database(name)


async def test_a_units_registry_calls_of_every_shape_go_through(apart: Apart) -> None:
    unit = apart.unit()
    since = await apart.last_audit_seq()
    submit = registry_pb2.SubmitMediaRequest(media=[submission("m1", md5(b"\x01" * 16))])
    submitted = await unit.SubmitMedia(iter([submit]), timeout=TIMEOUT_S)
    assert submitted.created == 1
    lookup = registry_pb2.LookupRequest(signals=[md5(b"\x01" * 16)])
    found = await unit.Lookup(lookup, timeout=TIMEOUT_S)
    assert [m.media.origin for m in found.results[0].matches] == [OWN]
    batches = [registry_pb2.LookupStreamRequest(batch_id=str(i), lookup=lookup) for i in range(3)]
    answers = [a async for a in unit.LookupStream(iter(batches), timeout=TIMEOUT_S)]
    assert [a.batch_id for a in answers] == ["0", "1", "2"]
    assert all(a.lookup.results[0].matches for a in answers)

    records = await apart.audit_after(since, 3)
    shapes = [
        (r.entry.method, r.entry.request_messages, r.entry.response_messages) for r in records
    ]
    assert shapes == [
        ("/hashex.v1.Registry/SubmitMedia", 1, 1),
        ("/hashex.v1.Registry/Lookup", 1, 1),
        ("/hashex.v1.Registry/LookupStream", 3, 3),
    ]
    assert {(r.entry.role, r.entry.status) for r in records} == {("unit", "OK")}
    assert records[0].entry.caller == f"spiffe://hashex/node/{OWN}/unit/alice"
    assert records[1].entry.request_digest == request_digest(lookup.SerializeToString())


async def test_a_peers_pull_reaches_sync_as_that_peer(apart: Apart) -> None:
    await apart.unit().SubmitMedia(
        iter([registry_pb2.SubmitMediaRequest(media=[submission("p1", md5(b"\x02" * 16))])]),
        timeout=TIMEOUT_S,
    )
    since = await apart.last_audit_seq()
    responses = [
        r async for r in apart.peer().Pull(federation_pb2.PullRequest(), timeout=TIMEOUT_S)
    ]
    bodies = [
        federation_pb2.BatchBody.FromString(r.batch.body) for r in responses if r.HasField("batch")
    ]
    assert bodies and {(b.origin, b.recipient) for b in bodies} == {(OWN, PEER)}
    assert sum(len(b.entries) for b in bodies) >= 1
    answer = await apart.peer().PeerLookup(
        federation_pb2.PeerLookupRequest(
            lookup=registry_pb2.LookupRequest(signals=[md5(b"\x02" * 16)])
        ),
        timeout=TIMEOUT_S,
    )
    assert [m.media.media_id for m in answer.lookup.results[0].matches] == ["p1"]
    pull, peer_lookup = await apart.audit_after(since, 2)
    assert (pull.entry.method, pull.entry.role, pull.entry.status) == (PULL, "peer", "OK")
    assert pull.entry.response_messages == len(responses)
    assert pull.entry.caller == f"spiffe://hashex/node/{PEER}"
    assert peer_lookup.entry.status == "OK"


async def test_internal_ports_serve_nothing_but_health_without_a_signed_caller(
    apart: Apart,
) -> None:
    """They are plaintext and may listen on the node's internal network: a call that did not
    come through the gateway (Registry, Admin, Units) is refused, health still answers."""
    bare = {
        "registry": grpc.aio.insecure_channel(apart.registry.address),
        "sync": grpc.aio.insecure_channel(apart.sync.address),
    }
    for channel in bare.values():
        apart.channels.append(channel)
    lookup = registry_pb2.LookupRequest(signals=[md5(b"\x09" * 16)])
    calls = {
        "Registry/Lookup": registry_pb2_grpc.RegistryStub(bare["registry"]).Lookup(lookup),
        "Admin/GetSyncStatus": federation_pb2_grpc.AdminStub(bare["sync"]).GetSyncStatus(
            federation_pb2.GetSyncStatusRequest()
        ),
        "Units/FederatedLookup": federation_pb2_grpc.UnitsStub(bare["sync"]).FederatedLookup(
            federation_pb2.FederatedLookupRequest(lookup=lookup)
        ),
    }
    for name, call in calls.items():
        refused = await _refusal(call)
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED, name
        assert "internal port" in (refused.details() or ""), name
    for channel in bare.values():
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_sync_port_runs_a_call_as_a_caller_only_with_a_valid_mac(apart: Apart) -> None:
    secret = load_internal_key(apart.config.data_dir)
    peer = Caller(PEER, "node", None, "peer", "00" * 32)
    now = time.time()
    refused = {
        "absent": (),
        "forged": caller_metadata(bytes(32), PULL, peer, now_s=now),
        "other method": caller_metadata(
            secret, "/hashex.v1.Federation/PeerLookup", peer, now_s=now
        ),
        "stale": caller_metadata(secret, PULL, peer, now_s=now - 120),
    }
    sync = apart.sync_port()
    for why, metadata in refused.items():
        with pytest.raises(grpc.aio.AioRpcError) as error:
            _ = [r async for r in sync.Pull(federation_pb2.PullRequest(), metadata=metadata)]
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED, why
    valid = caller_metadata(secret, PULL, peer, now_s=now)
    responses = [r async for r in sync.Pull(federation_pb2.PullRequest(), metadata=valid)]
    assert {
        federation_pb2.BatchBody.FromString(r.batch.body).recipient
        for r in responses
        if r.HasField("batch")
    } == {PEER}


async def test_upstream_errors_come_back_unchanged(apart: Apart) -> None:
    bad = registry_pb2.LookupRequest(signals=[md5(b"\x01" * 16), md5(b"\x03" * 3)])
    direct = await _refusal(apart.registry_port().Lookup(bad, timeout=TIMEOUT_S))
    forwarded = await _refusal(apart.unit().Lookup(bad, timeout=TIMEOUT_S))
    assert forwarded.code() == direct.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert forwarded.details() == direct.details()
    assert _status_details(forwarded) == _status_details(direct) != b""

    beyond = federation_pb2.PullRequest(after_seq=10**9, policy_generation=10**6)
    secret = load_internal_key(apart.config.data_dir)
    peer = Caller(PEER, "node", None, "peer", "00" * 32)
    metadata = caller_metadata(secret, PULL, peer, now_s=time.time())
    direct = await _refusal(_drain(apart.sync_port().Pull(beyond, metadata=metadata)))
    forwarded = await _refusal(_drain(apart.peer().Pull(beyond, timeout=TIMEOUT_S)))
    assert forwarded.code() == direct.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert forwarded.details() == direct.details()
    assert _status_details(forwarded) == _status_details(direct)


async def test_units_and_admin_are_served_by_sync_behind_the_gateway(apart: Apart) -> None:
    unit_identity = tls.issue_unit_certificate(apart.ca, unit="bob", roles=WORKING_ROLES)
    units = federation_pb2_grpc.UnitsStub(apart.gateway_channel(unit_identity))
    await apart.unit().SubmitMedia(
        iter([registry_pb2.SubmitMediaRequest(media=[submission("u1", md5(b"\x04" * 16))])]),
        timeout=TIMEOUT_S,
    )
    signals = [md5(b"\x04" * 16), md5(b"\x05" * 16)]
    answer = await units.FederatedLookup(
        federation_pb2.FederatedLookupRequest(
            lookup=registry_pb2.LookupRequest(signals=signals),
            ask_peers=True,
            peer_timeout_ms=2_000,
        ),
        timeout=TIMEOUT_S,
    )
    assert [m.media.media_id for m in answer.lookup.results[0].matches] == ["u1"]
    assert [(p.peer_id, p.asked) for p in answer.peers] == [(PEER, 1)]
    assert answer.peers[0].error  # the peer's gateway is not running: reported, not raised
    operator = tls.issue_operator_certificate(apart.ca, name="ops")
    admin = federation_pb2_grpc.AdminStub(apart.gateway_channel(operator))
    status = await admin.GetSyncStatus(federation_pb2.GetSyncStatusRequest(), timeout=TIMEOUT_S)
    assert status.node_id == OWN and [p.peer_id for p in status.peers] == [PEER]


async def test_sync_status_runs_apart_through_the_gateway(apart: Apart) -> None:
    """Run apart, `hashex sync status` answered UNIMPLEMENTED (it asked the registry's port).
    With only --data-dir it now says to go through the gateway (sync's internal port serves
    only calls the gateway signed); with an operator certificate it is answered."""
    data_dir = apart.config.data_dir
    assert apart.config.sync_address_file.read_text().strip() == apart.sync.address
    done = await asyncio.to_thread(hashex, "sync", "status", "--json", "--data-dir", data_dir)
    assert done.returncode == 2
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("hashex:")]
    assert "services run apart" in line and "--cert OPERATOR.pem" in line
    assert "UNIMPLEMENTED" not in line

    operator = tls.issue_operator_certificate(apart.ca, name="ops")
    cert_dir = data_dir.parent / "ops"
    cert_dir.mkdir(exist_ok=True)
    (cert_dir / "ops.pem").write_bytes(operator.certificate_pem)
    write_secret(cert_dir / "ops.key", operator.private_key_pem)
    (cert_dir / "ca.pem").write_bytes(apart.ca.certificate_pem)
    done = await asyncio.to_thread(
        hashex, "sync", "status", "--json", "--cert", cert_dir / "ops.pem",
        "--gateway", apart.gateway.address, "--data-dir", data_dir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["node_id"] == OWN and [p["peer_id"] for p in status["peers"]] == [PEER]


async def test_an_oversized_streamed_request_is_refused_before_it_goes_upstream(
    apart: Apart,
) -> None:
    since = await apart.last_audit_seq()
    small = registry_pb2.SubmitMediaRequest(media=[submission("s1", md5(b"\x06" * 16))])
    large = registry_pb2.SubmitMediaRequest(
        media=[submission("s2", md5(b"\x07" * 16), case_reference="x" * MAX_REQUEST_BYTES)]
    )
    refused = await _refusal(apart.unit().SubmitMedia(iter([small, large]), timeout=TIMEOUT_S))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "send smaller batches" in (refused.details() or "")
    (record,) = await apart.audit_after(since, 1)
    assert (record.entry.status, record.entry.request_messages) == ("RESOURCE_EXHAUSTED", 2)
    found = await apart.unit().Lookup(
        registry_pb2.LookupRequest(signals=[md5(b"\x07" * 16)]), timeout=TIMEOUT_S
    )
    assert not found.results[0].matches


async def test_a_stream_the_client_cancels_ends_upstream_and_is_audited(apart: Apart) -> None:
    since = await apart.last_audit_seq()
    requests: asyncio.Queue[registry_pb2.LookupStreamRequest | None] = asyncio.Queue()

    async def feed() -> AsyncIterator[registry_pb2.LookupStreamRequest]:
        while (item := await requests.get()) is not None:
            yield item

    call = apart.unit().LookupStream(feed(), timeout=TIMEOUT_S)
    lookup = registry_pb2.LookupRequest(signals=[md5(b"\x01" * 16)])
    await requests.put(registry_pb2.LookupStreamRequest(batch_id="a", lookup=lookup))
    first = await call.read()
    assert first.batch_id == "a"
    call.cancel()
    (record,) = await apart.audit_after(since, 1)
    assert (record.entry.method, record.entry.status) == (
        "/hashex.v1.Registry/LookupStream",
        "CANCELLED",
    )


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


async def _refusal(awaitable: Any) -> grpc.aio.AioRpcError:
    try:
        await awaitable
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the call was not refused")


def _status_details(error: grpc.aio.AioRpcError) -> bytes:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            assert isinstance(value, bytes)
            return value
    return b""
