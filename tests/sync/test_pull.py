"""Two nodes over real mutual TLS through their gateways: pulls replicate under the sender's
policy, resume, reject forgeries without applying anything, follow policy widening and key
rotation, and run continuously until stopped."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from hashex.v1 import federation_pb2, registry_pb2
from services.cli.main import main as hashex_main
from services.core.algorithms import SignalValue
from services.core.changelog import store as changelog
from services.core.changelog.store import EntryKind, PendingEntry
from services.core.server import build_server
from services.core.signing import Keyring, revoke, rotate
from services.core.trust import make_card, pin_card
from services.registry import convert
from services.registry.change_entries import media_entry
from services.registry.model import IdentificationStatus, LookupResult, MediaSubmission
from services.sync.audit_rejections import audit_quarantines, audit_rejections
from services.sync.batches import BatchRejected
from services.sync.divergence import Divergence, HistoryDiverged
from services.sync.origin_keys import LearnedRevocation
from services.sync.policy import SharingPolicy
from services.sync.puller import PeerPuller
from services.sync.store import CHECKPOINTS_KEPT
from tests.sync.federation_harness import SyncNode, two_nodes
from tests.sync.helpers import CAID_A, CAID_B, md5, media_record, pdq, sha256
from tests.waiting import wait_for

ONLY_A = SharingPolicy(categories=frozenset({"caid-uk:A"}), disclose_desk=False)


def media(media_id: str, *signals: SignalValue, **fields: Any) -> MediaSubmission:
    return MediaSubmission(media_id=media_id, signals=signals or (md5(media_id),), **fields)


async def lookup(node: SyncNode, *signals: SignalValue) -> list[LookupResult]:
    return await node.registry.lookup(signals, max_distance=31, max_matches=10)


@asynccontextmanager
async def admin_port(node: SyncNode) -> AsyncIterator[str]:
    """The node's Admin service on a loopback port, as `hashex sync ...` reaches it."""
    server = await build_server(
        listen="127.0.0.1:0", services=[node.sync.admin_binding()], tracer_provider=TracerProvider()
    )
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        await server.stop(0)


def puller(receiver: SyncNode, **overrides: Any) -> PeerPuller:
    return PeerPuller("gb-nca", replace(receiver.sync.supervisor.deps, **overrides))


@pytest.fixture
async def nodes(db_pool: Any, second_pool: Any, tmp_path: Path) -> Any:
    async with two_nodes(db_pool, second_pool, tmp_path) as pair:
        yield pair


async def test_records_replicate_under_the_senders_policy(nodes: tuple[SyncNode, SyncNode]) -> None:
    origin, receiver = nodes
    origin.set_policy("us-fbi", ONLY_A)
    await origin.registry.submit_batch(
        [
            media("shared", md5("shared"), pdq("shared"), category=CAID_A, series_ids=("s1",)),
            media("restricted", category=CAID_B),
        ]
    )
    await origin.registry.update_victim(
        series_id="s1",
        victim_id="v1",
        status=IdentificationStatus.IDENTIFIED,
        responsible_desk="GB-NCA victim-ID desk",
    )
    assert await puller(receiver).pull_once() >= 1

    [exact, restricted] = await lookup(receiver, md5("shared"), md5("restricted"))
    [match] = exact.matches
    assert (match.media.origin, match.media.media_id) == ("gb-nca", "shared")
    [series] = match.series
    assert [(v.status, v.responsible_desk) for v in series.victims] == [
        (IdentificationStatus.IDENTIFIED, "")
    ]
    assert restricted.matches == ()
    near = pdq("shared").value[:-1] + bytes([pdq("shared").value[-1] ^ 0x07])
    [near_result] = await lookup(receiver, SignalValue(pdq("x").algorithm, near, 90))
    assert [m.media.media_id for m in near_result.matches] == ["shared"]

    status = await receiver.sync.status()
    [peer] = status.peers
    assert (peer.peer_id, peer.lag, peer.rejected_batches, peer.last_error) == ("gb-nca", 0, 0, "")
    assert peer.cursor_seq == (await origin.sync.store.last_seq())

    # The origin retracts; the next pull carries the retraction.
    await origin.registry.retract(["shared"])
    await puller(receiver).pull_once()
    assert (await lookup(receiver, md5("shared")))[0].matches == ()


async def test_without_a_policy_nothing_leaves_until_one_is_set(
    nodes: tuple[SyncNode, SyncNode],
) -> None:
    origin, receiver = nodes
    await origin.registry.submit_batch([media("m", category=CAID_B)])
    await puller(receiver).pull_once()
    assert (await lookup(receiver, md5("m")))[0].matches == ()
    assert (await receiver.sync.store.cursor("gb-nca")).seq == 1  # the range still advanced
    origin.set_policy("us-fbi", ONLY_A)
    await puller(receiver).pull_once()
    assert (await lookup(receiver, md5("m")))[0].matches == ()
    # Widening the policy re-offers the whole log under a new generation.
    origin.set_policy("us-fbi", SharingPolicy())
    await puller(receiver).pull_once()
    assert len((await lookup(receiver, md5("m")))[0].matches) == 1
    assert (await receiver.sync.store.cursor("gb-nca")).generation == 2


async def test_a_forged_batch_is_rejected_reported_and_applies_nothing(
    nodes: tuple[SyncNode, SyncNode],
) -> None:
    origin, receiver = nodes
    origin.set_policy("us-fbi", SharingPolicy())
    await origin.registry.submit_batch([media(f"m{i}") for i in range(5)])
    real_open = receiver.sync.supervisor.deps.open_pull

    async def tampered(peer_id: str, request: federation_pb2.PullRequest, deadline_s: float) -> Any:
        async for response in real_open(peer_id, request, deadline_s):
            forged = federation_pb2.PullResponse()
            forged.CopyFrom(response)
            if not forged.HasField("batch"):  # the audit checkpoint that comes first
                yield forged
                continue
            body = bytearray(forged.batch.body)
            body[-1] ^= 1
            forged.batch.body = bytes(body)
            yield forged

    forged_puller = puller(receiver, open_pull=tampered)
    with pytest.raises(BatchRejected):
        await forged_puller.pull_once()
    assert [(peer, r.reason) for peer, r in receiver.rejections] == [("gb-nca", "bad_signature")]
    assert (await receiver.sync.store.cursor("gb-nca")).seq == 0
    assert (await lookup(receiver, md5("m0")))[0].matches == ()
    assert forged_puller.state.rejected_batches == 1
    # The honest stream afterwards applies everything once.
    await puller(receiver).pull_once()
    assert len((await lookup(receiver, md5("m4")))[0].matches) == 1


async def test_an_interrupted_pull_resumes_from_the_cursor(
    nodes: tuple[SyncNode, SyncNode],
) -> None:
    origin, receiver = nodes
    origin.set_policy("us-fbi", SharingPolicy())
    await origin.registry.submit_batch([media(f"m{i}") for i in range(30)])
    settings = receiver.sync.supervisor.deps.settings
    real_open = receiver.sync.supervisor.deps.open_pull

    async def cut_after_two(
        peer_id: str, request: federation_pb2.PullRequest, deadline_s: float
    ) -> Any:
        count = 0
        async for response in real_open(peer_id, request, deadline_s):
            yield response
            count += response.HasField("batch")  # not the audit checkpoint before them
            if count == 2:
                raise ConnectionResetError("connection cut by a proxy")

    small = replace(settings, max_entries=7)
    with pytest.raises(ConnectionResetError):
        await puller(receiver, open_pull=cut_after_two, settings=small).pull_once()
    assert (await receiver.sync.store.cursor("gb-nca")).seq == 14
    await puller(receiver, settings=small).pull_once()
    results = await lookup(receiver, *(md5(f"m{i}") for i in range(30)))
    assert all(len(r.matches) == 1 for r in results)
    assert (await receiver.sync.store.cursors())["gb-nca"].applied_entries == 30


async def test_a_rotated_key_is_learned_from_the_log(nodes: tuple[SyncNode, SyncNode]) -> None:
    origin, receiver = nodes
    origin.set_policy("us-fbi", SharingPolicy())
    await origin.registry.submit_batch([media("before")])
    await asyncio.to_thread(rotate, origin.config.signing_keys_dir)
    assert await origin.sync.store.log_key_rotations(origin.keyring()) == ["ed25519:2"]
    await origin.registry.submit_batch([media("after")])
    await puller(receiver).pull_once()
    assert len((await lookup(receiver, md5("after")))[0].matches) == 1
    learned = await receiver.sync.store.learned_keys("gb-nca")
    assert [k.key_id for k in learned] == ["ed25519:2"]


async def test_a_new_peer_replicates_everything_after_the_old_key_file_is_deleted(
    nodes: tuple[SyncNode, SyncNode],
) -> None:
    origin, receiver = nodes
    origin.set_policy("us-fbi", SharingPolicy())
    keys_dir = origin.config.signing_keys_dir
    await origin.registry.submit_batch([media("before")])
    await asyncio.to_thread(rotate, keys_dir)
    (keys_dir / "ed25519_1.key").unlink()  # before the running node even logged the rotation
    assert await origin.sync.store.log_key_rotations(origin.keyring()) == ["ed25519:2"]
    await origin.registry.submit_batch([media("after")])
    # us-fbi has pulled nothing yet: with the origin's current card it is a new peer.
    await asyncio.to_thread(
        pin_card, receiver.config.peers_dir, origin.card(), own_node_id="us-fbi", replace=True
    )
    await puller(receiver).pull_once()
    assert [len(r.matches) for r in await lookup(receiver, md5("before"), md5("after"))] == [1, 1]
    assert receiver.rejections == []
    learned = await receiver.sync.store.learned_keys("gb-nca")
    assert [k.key_id for k in learned] == ["ed25519:2"]


async def test_a_batch_signed_by_a_revoked_key_is_refused_and_reported(
    nodes: tuple[SyncNode, SyncNode],
) -> None:
    origin, receiver = nodes
    origin.set_policy("us-fbi", SharingPolicy())
    keys_dir = origin.config.signing_keys_dir
    await origin.registry.submit_batch([media("m")])
    await asyncio.to_thread(rotate, keys_dir)
    await origin.sync.store.log_key_rotations(origin.keyring())
    # The receiver pins a card revoking key 1 while the origin still signs with it (as a
    # thief of key 1 would).
    keyring = origin.keyring()
    revoking = Keyring(
        keyring.keys, tuple(r.revoked(1) if r.key_id == "ed25519:1" else r for r in keyring.history)
    )
    card = make_card(
        node_id="gb-nca",
        endpoint=origin.endpoint,
        ca_certificate_pem=origin.ca.certificate_pem,
        keyring=revoking,
    )
    await asyncio.to_thread(
        pin_card, receiver.config.peers_dir, card, own_node_id="us-fbi", replace=True
    )
    with pytest.raises(BatchRejected) as rejected:
        await puller(receiver).pull_once()
    assert rejected.value.reason == "revoked_key"
    [(peer_id, reported)] = receiver.rejections
    assert peer_id == "gb-nca" and reported.reason == "revoked_key"
    assert "signed with key ed25519:1, which its origin revoked entirely" in str(reported)
    assert not (await lookup(receiver, md5("m")))[0].matches
    # Once the origin revokes key 1 itself, key 2 signs its whole history.
    await asyncio.to_thread(revoke, keys_dir, "ed25519:1", from_seq=1)
    await puller(receiver).pull_once()
    assert len((await lookup(receiver, md5("m")))[0].matches) == 1


async def test_sync_status_shows_the_keys_a_peer_rotated_to(
    nodes: tuple[SyncNode, SyncNode], capsys: pytest.CaptureFixture[str]
) -> None:
    origin, receiver = nodes
    origin.set_policy("us-fbi", SharingPolicy())
    await origin.registry.submit_batch([media("m")])
    await asyncio.to_thread(rotate, origin.config.signing_keys_dir)
    await origin.sync.store.log_key_rotations(origin.keyring())
    await puller(receiver).pull_once()
    async with admin_port(receiver) as address:
        code = await asyncio.to_thread(hashex_main, ["sync", "status", "--node", address])
        assert code == 0
        text = capsys.readouterr().out
        assert (
            "gb-nca: keys ed25519:1 (retired at seq 2), "
            "ed25519:2 (current, learned from its log)" in text
        ), "the card pinned before the rotation lists key 1 only"
        await asyncio.to_thread(hashex_main, ["sync", "status", "--json", "--node", address])
        [peer] = json.loads(capsys.readouterr().out)["peers"]
        assert [(k["key_id"], k["state"], k["on_card"]) for k in peer["signing_keys"]] == [
            ("ed25519:1", "retired", True),
            ("ed25519:2", "current", False),
        ]


async def test_a_peer_that_pinned_the_card_long_ago_learns_a_revocation_from_the_log(
    nodes: tuple[SyncNode, SyncNode],
) -> None:
    origin, receiver = nodes
    origin.set_policy("us-fbi", SharingPolicy())
    keys_dir = origin.config.signing_keys_dir
    await origin.registry.submit_batch([media("m")])
    await asyncio.to_thread(rotate, keys_dir)
    await origin.sync.store.log_key_rotations(origin.keyring())
    await puller(receiver).pull_once()
    await asyncio.to_thread(revoke, keys_dir, "ed25519:1", from_seq=1)
    assert await origin.sync.store.log_key_revocations(origin.keyring()) == ["ed25519:1"]
    assert await origin.sync.store.log_key_revocations(origin.keyring()) == [], "logged once"
    await puller(receiver).pull_once()
    assert await receiver.sync.store.learned_revocations("gb-nca") == [
        LearnedRevocation("ed25519:1", 1)
    ]
    status = await receiver.sync.admin.GetSyncStatus(federation_pb2.GetSyncStatusRequest(), None)
    [peer] = status.peers
    assert [(k.key_id, k.state) for k in peer.signing_keys] == [
        ("ed25519:1", federation_pb2.PeerSigningKey.STATE_REVOKED),
        ("ed25519:2", federation_pb2.PeerSigningKey.STATE_CURRENT),
    ]
    # A wider policy re-offers the whole log: key 2 signs it all, key 1's seqs included.
    origin.set_policy("us-fbi", SharingPolicy(disclose_desk=True))
    await puller(receiver).pull_once()
    assert receiver.rejections == []
    assert len((await lookup(receiver, md5("m")))[0].matches) == 1


async def test_pullers_run_continuously_and_stop_cleanly(
    db_pool: Any, second_pool: Any, tmp_path: Path
) -> None:
    async with two_nodes(db_pool, second_pool, tmp_path, pull_interval_s=0.05) as (
        origin,
        receiver,
    ):
        origin.set_policy("us-fbi", SharingPolicy())
        await origin.registry.submit_batch([media("live")])
        await receiver.sync.reconcile()  # starts the puller task for the pinned peer
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not (await lookup(receiver, md5("live")))[0].matches:
            assert loop.time() < deadline, "the record never arrived"
            await asyncio.sleep(0.05)  # polling the database: there is nothing to wait on
        await receiver.sync.stop()
        assert receiver.sync.supervisor.running_peers() == []


async def test_peer_lookup_answers_own_records_under_policy(
    nodes: tuple[SyncNode, SyncNode],
) -> None:
    origin, receiver = nodes
    question = registry_pb2.LookupRequest(
        signals=[convert.signal_to_proto(md5("open")), convert.signal_to_proto(md5("closed"))]
    )
    answer = await receiver.sync.clients.peer_lookup("gb-nca", question, timeout_s=10)
    assert all(not r.matches for r in answer.results)  # no policy: nothing
    origin.set_policy("us-fbi", ONLY_A)
    await origin.registry.submit_batch(
        [media("open", category=CAID_A), media("closed", category=CAID_B)]
    )
    answer = await receiver.sync.clients.peer_lookup("gb-nca", question, timeout_s=10)
    assert [len(r.matches) for r in answer.results] == [1, 0]
    assert answer.results[0].matches[0].media.origin == "gb-nca"


async def test_sync_status_command(
    nodes: tuple[SyncNode, SyncNode], capsys: pytest.CaptureFixture[str]
) -> None:
    origin, receiver = nodes
    origin.set_policy("us-fbi", SharingPolicy())
    await origin.registry.submit_batch([media("m")])
    await puller(receiver).pull_once()
    receiver.sync.pullers["gb-nca"] = puller(receiver)  # as the supervisor would hold it
    async with admin_port(receiver) as address:
        code = await asyncio.to_thread(hashex_main, ["sync", "status", "--node", address])
        assert code == 0
        text = capsys.readouterr().out
        assert "node us-fbi" in text and "gb-nca" in text
        code = await asyncio.to_thread(hashex_main, ["sync", "status", "--json", "--node", address])
        [peer] = json.loads(capsys.readouterr().out)["peers"]
        assert (peer["peer_id"], peer["cursor_seq"], peer["lag"]) == ("gb-nca", 1, 0)


async def test_a_rejected_batch_is_audited(nodes: tuple[SyncNode, SyncNode]) -> None:
    origin, receiver = nodes
    origin.set_policy("de-bka", SharingPolicy())
    await origin.registry.submit_batch([media("m")])
    assert receiver.gateway is not None
    audited = audit_rejections(receiver.gateway.record, now=lambda: datetime.now(UTC))
    misaddressed = origin.sync.federation._sender.batches_for(
        "de-bka", federation_pb2.PullRequest()
    )
    stolen = [
        federation_pb2.PullResponse(batch=b)
        async for b in misaddressed
        if isinstance(b, federation_pb2.SignedBatch)
    ]

    async def replay(peer_id: str, request: federation_pb2.PullRequest, deadline_s: float) -> Any:
        for response in stolen:
            yield response

    with pytest.raises(BatchRejected):
        await puller(receiver, open_pull=replay, on_rejected=audited).pull_once()
    records = [r async for r in receiver.gateway.audit.records()]
    [record] = [r for r in records if r.entry.status.startswith("BATCH_REJECTED")]
    assert record.entry.status == "BATCH_REJECTED:wrong_recipient"
    assert record.entry.caller == "spiffe://hashex/node/gb-nca"
    assert (await lookup(receiver, md5("m")))[0].matches == ()


async def test_an_entry_the_receiver_cannot_apply_is_quarantined_and_the_rest_replicates(
    nodes: tuple[SyncNode, SyncNode], db_pool: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """An older release logged a media with two SHA-256 values and bytes that are no entry at
    all: the receiver sets both aside, applies what is around them, audits it, lists it, and
    never asks for them again."""
    origin, receiver = nodes
    origin.set_policy("us-fbi", SharingPolicy())
    await origin.registry.submit_batch([media("before")])
    bad = media_record("twice", sha256("x"), sha256("y"))
    async with db_pool.acquire() as conn, conn.transaction():
        await changelog.lock_change_log(conn)
        await changelog.append_entries(
            conn,
            [
                PendingEntry(EntryKind.MEDIA, lambda seq, at: media_entry(seq, at, bad)),
                PendingEntry(EntryKind.MEDIA, lambda seq, at: b"\xff\xffnot an entry"),
            ],
        )
    await origin.registry.submit_batch([media("after")])
    assert receiver.gateway is not None
    audited = audit_quarantines(receiver.gateway.record, now=lambda: datetime.now(UTC))
    assert await puller(receiver, on_quarantined=audited).pull_once() == 1
    assert (await lookup(receiver, md5("before")))[0].matches
    assert (await lookup(receiver, md5("after")))[0].matches
    assert not (await lookup(receiver, sha256("x")))[0].matches
    assert (await receiver.sync.store.cursor("gb-nca")).seq == 4
    held = await receiver.sync.store.quarantine()
    assert [(q.peer_id, q.seq) for q in held] == [("gb-nca", 2), ("gb-nca", 0)]
    assert "2 sha256 signals; at most 1 per media" in held[0].reason
    records = [r async for r in receiver.gateway.audit.records()]
    [record] = [r for r in records if r.entry.status.startswith("ENTRIES_QUARANTINED")]
    assert record.entry.status == "ENTRIES_QUARANTINED:2"
    assert record.entry.caller == "spiffe://hashex/node/gb-nca"

    # Nothing is retried; what follows replicates as usual.
    await origin.registry.submit_batch([media("later")])
    assert await puller(receiver).pull_once() == 1
    assert (await lookup(receiver, md5("later")))[0].matches
    assert len(await receiver.sync.store.quarantine()) == 2

    receiver.sync.pullers["gb-nca"] = puller(receiver)
    [peer] = (await receiver.sync.status()).peers
    assert (peer.quarantined_entries, peer.lag, peer.cursor_seq) == (2, 0, 5)
    async with admin_port(receiver) as address:
        command = ["sync", "quarantine", "--node", address]
        assert await asyncio.to_thread(hashex_main, command) == 0
        text = capsys.readouterr().out
        assert "2 sha256 signals" in text and "not a serialized ChangeEntry" in text
        assert await asyncio.to_thread(hashex_main, [*command, "--limit", "1", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [e["seq"] for e in listed["entries"]] == [2] and listed["more"] is True
        after = ["--after", str(listed["entries"][0]["id"]), "--json"]
        assert await asyncio.to_thread(hashex_main, [*command, *after]) == 0
        rest = json.loads(capsys.readouterr().out)
        assert [e["seq"] for e in rest["entries"]] == [0] and rest["more"] is False
        assert await asyncio.to_thread(hashex_main, ["sync", "status", "--node", address]) == 0
        assert "QUARANTINED" in capsys.readouterr().out


async def test_an_origin_restored_from_a_backup_is_detected_and_a_resync_converges(
    nodes: tuple[SyncNode, SyncNode], db_pool: Any, second_pool: Any
) -> None:
    """gb-nca logs m1-m4, us-fbi pulls each as it comes; gb-nca is restored to its backup at
    seq 2 (m3, m4 and their entries gone) and logs n3-n5. us-fbi stops applying and names seq
    3 as where the histories part (found by asking gb-nca about its checkpoints), and after
    `sync resync` holds exactly gb-nca's records: nothing stale, nothing twice."""
    origin, receiver = nodes
    origin.set_policy("us-fbi", SharingPolicy())
    for name in ("m1", "m2", "m3", "m4"):
        await origin.registry.submit_batch([media(name)])
        await puller(receiver).pull_once()
    assert (await receiver.sync.store.cursor("gb-nca")).seq == 4

    async with db_pool.acquire() as conn, conn.transaction():  # what restoring the backup does
        await conn.execute("DELETE FROM change_log WHERE seq > 2")
        lost = "SELECT id FROM media WHERE media_id = ANY(ARRAY['m3', 'm4'])"
        for table in ("case_records", "signals", "media_series"):
            await conn.execute(f"DELETE FROM {table} WHERE media_row IN ({lost})")
        await conn.execute(f"DELETE FROM media WHERE id IN ({lost})")
    parted = "not the one applied here from seq 3 on (seqs 1-2 are the same)"
    with pytest.raises(HistoryDiverged, match=re.escape(parted)) as short:
        await puller(receiver).pull_once()
    assert short.value.divergence == Divergence(agreed=2, differs=3)
    assert "hashex sync resync gb-nca" in str(short.value)
    refusal = short.value.__cause__
    assert isinstance(refusal, grpc.aio.AioRpcError)
    assert "ends at seq 2, before seq 4" in (refusal.details() or "")
    for name in ("n3", "n4", "n5"):  # the new history passes the old cursor: still refused
        await origin.registry.submit_batch([media(name)])
    asked: list[int] = []
    open_pull = receiver.sync.supervisor.deps.open_pull

    def counted(peer_id: str, request: federation_pb2.PullRequest, timeout_s: float) -> Any:
        asked.append(request.after_seq)
        return open_pull(peer_id, request, timeout_s)

    diverged = puller(receiver, open_pull=counted)
    with pytest.raises(HistoryDiverged, match=re.escape(parted)):
        await diverged.pull_once()
    assert asked[0] == 4 and sorted(asked[1:]) == [2, 3]  # the pull, then two questions
    with pytest.raises(HistoryDiverged):  # found once per cursor: no more questions
        await diverged.pull_once()
    assert asked[len(asked) - 1 :] == [4] and len(asked) == 4
    assert (await lookup(receiver, md5("m3")))[0].matches  # still stale, and nothing applied
    assert not (await lookup(receiver, md5("n5")))[0].matches

    receiver.sync.pullers["gb-nca"] = puller(receiver)
    assert await receiver.sync.resync("gb-nca") == 4
    [peer] = (await receiver.sync.status()).peers
    assert peer.resyncing and peer.cursor_seq == 0
    assert not (await lookup(receiver, md5("m1")))[0].matches  # withdrawn until re-pulled

    await puller(receiver).pull_once()
    held = await second_pool.fetch(
        "SELECT media_id, retracted_at IS NULL AS live FROM media WHERE origin = 'gb-nca'"
    )
    assert sorted((r["media_id"], r["live"]) for r in held) == [
        (name, True) for name in ("m1", "m2", "n3", "n4", "n5")
    ]
    for name in ("m1", "m2", "n3", "n5"):
        [result] = await lookup(receiver, md5(name))
        assert [m.media.media_id for m in result.matches] == [name]
    assert not (await lookup(receiver, md5("m4")))[0].matches
    [peer] = (await receiver.sync.status()).peers
    assert (peer.resyncing, peer.cursor_seq, peer.lag) == (False, 5, 0)

    await origin.registry.submit_batch([media("n6")])  # and on it goes
    await puller(receiver).pull_once()
    assert (await lookup(receiver, md5("n6")))[0].matches


async def test_each_pull_keeps_the_chain_checkpoints_thin(
    nodes: tuple[SyncNode, SyncNode], second_pool: Any
) -> None:
    """Every applied batch adds a checkpoint; a pull thins them, so they stay bounded."""
    origin, receiver = nodes
    origin.set_policy("us-fbi", SharingPolicy())
    await second_pool.executemany(
        "INSERT INTO sync_chain_checkpoints (peer_id, seq, chain) VALUES ('gb-nca', $1, $2)",
        [(seq, bytes(32)) for seq in range(1000, 1000 + 2 * CHECKPOINTS_KEPT)],
    )
    await origin.registry.submit_batch([media("m")])
    await puller(receiver).pull_once()
    count = "SELECT count(*) FROM sync_chain_checkpoints WHERE peer_id = 'gb-nca'"
    assert await second_pool.fetchval(count) == CHECKPOINTS_KEPT + 1  # and the batch's own


async def test_sync_resync_command(
    nodes: tuple[SyncNode, SyncNode], capsys: pytest.CaptureFixture[str]
) -> None:
    origin, receiver = nodes
    origin.set_policy("us-fbi", SharingPolicy())
    await origin.registry.submit_batch([media("m")])
    await puller(receiver).pull_once()
    async with admin_port(receiver) as address:
        resync = ["sync", "resync", "--node", address]
        assert await asyncio.to_thread(hashex_main, [*resync, "gb-nca"]) == 0
        assert "resync of gb-nca started: 1 of its media withdrawn" in capsys.readouterr().out
        assert await asyncio.to_thread(hashex_main, ["sync", "status", "--node", address]) == 0
        assert "gb-nca: resync under way" in capsys.readouterr().out
        assert await asyncio.to_thread(hashex_main, [*resync, "xx-none"]) == 4
        assert "no peer 'xx-none'" in capsys.readouterr().err
    await puller(receiver).pull_once()
    assert (await lookup(receiver, md5("m")))[0].matches
    assert not (await receiver.sync.status()).peers[0].resyncing


async def test_a_resync_of_an_origin_restored_to_an_empty_log_completes(
    db_pool: Any, second_pool: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """gb-nca is restored to a backup from before it logged anything: nothing is re-sent, so no
    batch finishes the resync; catching up (its keep-alive) does, and deletes what it dropped."""
    holding = {"pull_keepalive_s": 0.2, "pull_hold_s": 60.0, "pull_deadline_s": 120.0}
    async with two_nodes(
        db_pool, second_pool, tmp_path, origin_settings=holding, pull_interval_s=60.0
    ) as (origin, receiver):
        origin.set_policy("us-fbi", SharingPolicy())
        await origin.registry.submit_batch([media("m1")])
        await puller(receiver).pull_once()
        async with db_pool.acquire() as conn, conn.transaction():  # the empty backup
            for table in ("change_log", "case_records", "signals", "media_series", "media"):
                await conn.execute(f"DELETE FROM {table}")
        receiver.sync.pullers["gb-nca"] = puller(receiver)
        assert await receiver.sync.resync("gb-nca") == 1
        held = puller(receiver, settings=replace(receiver.sync.supervisor.deps.settings, hold_s=1))
        with caplog.at_level(logging.INFO, logger="services.sync.puller"):
            assert await held.pull_once(hold=True) == 0
        assert "resync of gb-nca complete: 1 of its media it no longer holds deleted" in (
            caplog.text
        )
        [peer] = (await receiver.sync.status()).peers
        assert (peer.resyncing, peer.cursor_seq, peer.lag) == (False, 0, 0)
        count = "SELECT count(*) FROM media WHERE origin = 'gb-nca'"
        assert await second_pool.fetchval(count) == 0


async def test_a_held_pull_delivers_each_commit_and_an_idle_one_writes_nothing(
    db_pool: Any, second_pool: Any, tmp_path: Path
) -> None:
    """With polling every 60 s, only a pull the origin holds open can bring a record within
    seconds. While idle it only sends keep-alives: no audit record, no pull call, on either
    side; a policy edit ends the held pull, so the widened re-offer comes at once."""
    holding = {"pull_keepalive_s": 0.2, "pull_hold_s": 60.0, "pull_deadline_s": 120.0}
    async with two_nodes(
        db_pool, second_pool, tmp_path, origin_settings=holding, pull_interval_s=60.0
    ) as (origin, receiver):
        assert origin.gateway is not None and receiver.gateway is not None
        origin.set_policy("us-fbi", SharingPolicy(categories=frozenset({"caid-uk:A"})))
        await origin.registry.submit_batch([media("first", category=CAID_A)])
        await receiver.sync.reconcile()

        async def holds(name: str) -> bool:
            return bool((await lookup(receiver, md5(name)))[0].matches)

        await wait_for(lambda: holds("first"), 20, "the first record never arrived")
        await origin.registry.submit_batch([media("second", category=CAID_A)])
        await wait_for(lambda: holds("second"), 10, "a commit was not pushed to the held pull")

        async def audited() -> tuple[int, int]:
            return (
                len([r async for r in origin.gateway.audit.records()]),  # type: ignore[union-attr]
                len([r async for r in receiver.gateway.audit.records()]),  # type: ignore[union-attr]
            )

        puller = receiver.sync.pullers["gb-nca"]
        before, seen_at = await audited(), puller.state.last_success_at
        await asyncio.sleep(1.5)  # idle: some seven keep-alives
        assert await audited() == before
        assert puller.held and puller.state.last_success_at != seen_at
        [peer] = (await receiver.sync.status()).peers
        assert (peer.lag, peer.last_error) == (0, "")

        await origin.registry.submit_batch([media("restricted", category=CAID_B)])
        assert not await holds("restricted")
        origin.set_policy("us-fbi", SharingPolicy())  # widened: a new generation
        await wait_for(lambda: holds("restricted"), 10, "the widened policy was not re-offered")
        stopping = asyncio.get_running_loop().time()
    # Held pulls end at once on stop: no grace period waited out for them.
    assert asyncio.get_running_loop().time() - stopping < 2.0
