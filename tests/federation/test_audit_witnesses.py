"""Peers as witnesses of a node's audit log: every pull carries a signed checkpoint (record
count and head digest) that the puller keeps, so rows cut off the origin's audit table directly
in SQL, as an attacker with database access would, are detected by the next pull: logged as an
error, audited by the receiver and shown in its `hashex sync status`."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from nacl.signing import SigningKey

from hashex.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from services.core.signing import NodeSigningKey
from services.sync.audit_checkpoints import (
    CheckpointRefused,
    contradiction,
    sign_checkpoint,
    verify_checkpoint,
)
from tests.federation.harness import Agency, federation
from tests.waiting import wait_for

WAIT_S = 60.0
CALLS = 5
MD5 = "ab" * 16


async def _kept_count(receiver: Agency, origin: str) -> int:
    rows = await receiver.fetch(
        "SELECT record_count FROM sync_audit_checkpoints WHERE origin = $1", origin
    )
    return int(rows[0]["record_count"]) if rows else -1


async def _truncate_audit_log(url: str, *, keep: int) -> None:
    connection = await asyncpg.connect(url)
    try:  # someone with the power to switch the append-only trigger off
        await connection.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        await connection.execute("DELETE FROM audit_log WHERE seq > $1", keep)
        await connection.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
    finally:
        await connection.close()


async def _verify_against_peers(agency: Agency) -> tuple[int, str, str]:
    """`hashex audit verify --against-peers` of `agency`, in a process of its own."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if agency.database_url:
        env["DATABASE_URL"] = agency.database_url
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli.main", "audit", "verify", "--against-peers",
        "--timeout", "5", "--data-dir", str(agency.data_dir),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_peer_detects_a_truncated_audit_log(
    pg_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with federation(["gb-nca", "us-hsi"], tmp_path, pg_server) as fed:
        origin, receiver = fed["gb-nca"], fed["us-hsi"]
        registry = registry_pb2_grpc.RegistryStub(origin.unit_channel())
        for _ in range(CALLS):
            await registry.GetStats(registry_pb2.GetStatsRequest(), timeout=10)
        audited = await origin.row_count("SELECT count(*) FROM audit_log")
        assert audited >= CALLS

        async def witnessed() -> bool:
            return await _kept_count(receiver, "gb-nca") >= audited

        await wait_for(witnessed, WAIT_S, "us-hsi kept no checkpoint of gb-nca's audit log")
        assert (await receiver.status()).peers[0].audit_alarm == ""
        code, out, err = await _verify_against_peers(origin)
        assert code == 0, (out, err)
        assert "us-hsi: intact: agrees with its checkpoint at" in out

        assert origin.database_url is not None
        await _truncate_audit_log(origin.database_url, keep=2)

        async def alarmed() -> bool:
            peers = {p.peer_id: p for p in (await receiver.status()).peers}
            return peers["gb-nca"].audit_alarm != ""

        await wait_for(alarmed, WAIT_S, "us-hsi did not notice the truncated audit log")
        alarm = {p.peer_id: p for p in (await receiver.status()).peers}["gb-nca"].audit_alarm
        assert alarm.startswith("audit log truncated: gb-nca signed"), alarm
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert any("audit log truncated" in r.getMessage() for r in errors)
        statuses = [
            r["status"]
            for r in await receiver.fetch("SELECT status FROM audit_log WHERE role = 'peer'")
        ]
        assert "AUDIT_LOG_TRUNCATED" in statuses
        code, out, err = await _verify_against_peers(origin)
        assert code == 1, (out, err)
        assert "us-hsi: truncated: this node signed" in out
        assert "ALTERED: contradicted by the checkpoints of us-hsi (truncated)" in err
        # The proof: both signed checkpoints of the origin, kept by the receiver.
        [proof] = await receiver.fetch(
            "SELECT kind, kept_body, received_body FROM sync_audit_contradictions"
        )
        assert proof["kind"] == "truncated" and proof["kept_body"] != proof["received_body"]
        # Replication goes on.
        await origin.submit(
            registry_pb2.MediaSubmission(
                media_id="after",
                signals=[
                    common_pb2.Signal(algorithm=common_pb2.HASH_ALGORITHM_MD5, value="ab" * 16)
                ],
            )
        )

        async def replicated() -> bool:
            return "after" in await receiver.media_ids("gb-nca")

        await wait_for(replicated, WAIT_S, "replication stopped after the alarm")


async def test_verify_against_peers_reports_unwitnessed_logs_as_such(
    pg_server: Any, tmp_path: Path
) -> None:
    """A peer that cannot be reached is named as such and the command exits 5, never 0."""
    async with federation(["gb-nca", "us-hsi"], tmp_path, pg_server, start=False) as fed:
        origin = fed["gb-nca"]
        await origin.start()
        code, out, err = await _verify_against_peers(origin)
        assert code == 5, (out, err)
        assert "us-hsi: unreachable: UNAVAILABLE" in out
        assert "not witnessed by us-hsi" in err


def _key() -> NodeSigningKey:
    return NodeSigningKey("ed25519:1", SigningKey(bytes(range(32))))


def _signed(count: int, head: bytes, witness: int = 0, witness_digest: bytes | None = None) -> Any:
    return sign_checkpoint(
        key=_key(), origin="gb-nca", recipient="us-hsi", record_count=count, head_digest=head,
        witness_count=witness, witness_digest=witness_digest, at=datetime.now(UTC),
    )  # fmt: skip


def _verified(signed: Any) -> Any:
    keys = {"ed25519:1": _key().public_key}
    return verify_checkpoint(signed, origin="gb-nca", recipient="us-hsi", keys=keys)


def test_checkpoints_that_contradict_the_one_kept() -> None:
    a, b = bytes([1]) * 32, bytes([2]) * 32
    kept = _verified(_signed(10, a)).held
    assert contradiction(kept, _verified(_signed(11, b, 10, a))) is None
    assert contradiction(None, _verified(_signed(3, b))) is None
    found = contradiction(kept, _verified(_signed(9, b, 10, None)))
    assert found is not None and found.kind == "truncated"
    found = contradiction(kept, _verified(_signed(10, b, 10, b)))
    assert found is not None and found.kind == "rewritten"
    # Cut, then grown past the kept count again: the witness digest gives it away.
    found = contradiction(kept, _verified(_signed(12, b, 10, b)))
    assert found is not None and found.kind == "rewritten"


def test_a_checkpoint_that_does_not_verify_is_refused() -> None:
    signed = _signed(10, bytes(32))
    # One bit of the body flipped (setting a byte to a fixed value was no change 1 time in 256).
    body = signed.body[:-1] + bytes([signed.body[-1] ^ 1])
    forged = type(signed)(body=body, key_id=signed.key_id, signature=signed.signature)
    with pytest.raises(CheckpointRefused, match="signature"):
        _verified(forged)
    with pytest.raises(CheckpointRefused, match="not of"):
        verify_checkpoint(
            signed, origin="gb-nca", recipient="de-bka", keys={"ed25519:1": _key().public_key}
        )
    oversized = type(signed)(body=b"x" * 600, key_id="ed25519:1", signature=bytes(64))
    with pytest.raises(CheckpointRefused, match="512"):
        _verified(oversized)
