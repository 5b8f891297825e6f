"""The origin's side of Federation.Pull: this node's change log after the caller's cursor, as
signed batches addressed to the caller and filtered by this node's policy for it.

A caller whose last batch was filtered under an older policy generation than the current one is
re-offered the log from seq 1 under the new generation (entries a wider policy now allows reach
it; re-applying what it holds changes nothing). The chain continues from the caller's digest
either way. A caller that applied a history this log no longer has (this node was restored from
a backup, or its log forked) is refused with FAILED_PRECONDITION naming the seq, checked against
the log chain the caller sends. Pages of the log are read as the stream is consumed, so a long
catch-up never holds the whole log in memory.

A caller that asks to wait (`wait_s`) is not sent away at the log's end: the stream stays open
for up to this node's `pull_hold_s`, batches follow each commit (LogWatcher), and a keep-alive
goes out on catching up and every `pull_keepalive_s` while idle. So replication latency is the
commit, and an idle federation makes one call, one log line and one audit record per peer per
hold instead of one every poll. No gRPC here: the servicer converts and maps errors.

A signed checkpoint of this node's audit log starts every stream and precedes every keep-alive
(services.sync.audit_checkpoints), signed with the newest key the caller already knows (one
published at or before its cursor), so that it verifies before any batch teaches a newer one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from hashex.v1 import federation_pb2
from services.core.audit.store import AuditHead
from services.core.clock import SYSTEM_CLOCK, Clock
from services.core.errors import FailedPrecondition
from services.core.signing import Keyring
from services.sync.audit_checkpoints import sign_checkpoint
from services.sync.batches import BatchChain, entries_per_batch, key_for
from services.sync.log_watcher import LogWatcher
from services.sync.policy import SharingPolicy
from services.sync.store import SyncStore

PolicyFor = Callable[[str], SharingPolicy | None]
# How often a held, idle pull looks whether the sharing policy for its caller changed.
POLICY_RECHECK_S = 1.0


class AuditHeads(Protocol):
    """services.core.audit.store.AuditStore: this node's audit log, read for checkpoints."""

    async def head(self) -> AuditHead: ...

    async def digest_at(self, seq: int) -> bytes | None: ...


@dataclass(frozen=True)
class KeepAlive:
    """Sent on catching up and while a held pull is idle: everything up to `origin_last_seq`
    has been sent."""

    origin_last_seq: int


@dataclass(frozen=True)
class Holding:
    """How this node holds caught-up pulls open: at most `max_s` (its `pull_hold_s`), a
    keep-alive every `keepalive_s`, woken by `watcher` as its log grows."""

    watcher: LogWatcher
    max_s: float
    keepalive_s: float
    clock: Clock = SYSTEM_CLOCK


class LogSender:
    def __init__(
        self,
        *,
        node_id: str,
        store: SyncStore,
        keyring: Callable[[], Keyring],
        policy_for: PolicyFor,
        holding: Holding | None = None,
        audit: AuditHeads | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`holding` None: pulls always end at the log's end (wait_s is ignored). `audit`
        None: no audit checkpoint is sent (a sync service without an audit log)."""
        self._audit = audit
        self._now = now
        self._node_id = node_id
        self._store = store
        self._keyring = keyring
        self._policy_for = policy_for
        self._holding = holding

    async def batches_for(
        self, recipient: str, request: federation_pb2.PullRequest
    ) -> AsyncIterator[
        federation_pb2.SignedBatch | KeepAlive | federation_pb2.SignedAuditCheckpoint
    ]:
        """Signed batches up to the log's end; then, when the caller asked to wait, batches as
        the log grows and keep-alives while it does not, until the hold ends, the sharing
        policy for the caller changes, or the node stops."""
        max_entries = entries_per_batch(request.max_entries_per_batch)
        policy = self._policy_for(recipient)
        current = policy.generation if policy is not None else 0
        if request.policy_generation < current:
            after, generation = 0, current
        else:
            # Never lower the caller's generation (a policy file recreated from scratch restarts
            # its count); the current policy filters either way.
            after, generation = request.after_seq, request.policy_generation
        holding = self._holding if request.wait_s > 0 else None
        until = holding.clock.monotonic() + min(request.wait_s, holding.max_s) if holding else 0.0
        ticket = await holding.watcher.ticket() if holding else None
        last = await self._store.last_seq()
        await self._check_history(recipient, request, last)
        schedule = await self._store.key_schedule(self._keyring())
        # The count the caller keeps; within the stream, the count last sent (it keeps each).
        witness = request.audit_checkpoint_count
        if self._audit is not None:
            checkpoint, witness = await self._audit_checkpoint(recipient, request, witness)
            yield checkpoint
        chain = BatchChain(
            origin=self._node_id,
            recipient=recipient,
            policy=policy,
            generation=generation,
            previous_digest=request.after_digest,
            previous_chain=await self._store.chain_at(after) or b"",
            schedule=schedule,
            max_entries=max_entries,
        )
        while True:
            while after < last:
                limit = min(max_entries, last - after)
                rows = await self._store.read_log(after_seq=after, limit=limit)
                if not rows:
                    break
                for batch in chain.batches(rows, last):
                    yield batch
                after = rows[-1].seq
            if holding is None or ticket is None:
                return
            if self._audit is not None:
                checkpoint, witness = await self._audit_checkpoint(recipient, request, witness)
                yield checkpoint
            yield KeepAlive(last)
            async for _ in self._idle(holding, ticket, until, recipient, current):
                if self._audit is not None:
                    checkpoint, witness = await self._audit_checkpoint(recipient, request, witness)
                    yield checkpoint
                yield KeepAlive(last)
            if holding.watcher.closed or holding.clock.monotonic() >= until:
                return
            if _generation(self._policy_for(recipient)) != current:
                return
            ticket = await holding.watcher.ticket()
            last = await self._store.last_seq()
            # A key rotation logged meanwhile signs the batches after it.
            chain.schedule = tuple(await self._store.key_schedule(self._keyring()))

    async def _idle(
        self, holding: Holding, ticket: asyncio.Event, until: float, recipient: str, current: int
    ) -> AsyncIterator[None]:
        """While nothing is committed: yields when a keep-alive is due; returns when the log
        may have grown, the hold is over, the node stops or the policy for the caller changed
        (looked at every POLICY_RECHECK_S: a policy is a file, nothing notifies its edits)."""
        keepalive_at = holding.clock.monotonic() + holding.keepalive_s
        while not ticket.is_set() and not holding.watcher.closed:
            now = holding.clock.monotonic()
            if now >= until or _generation(self._policy_for(recipient)) != current:
                return
            if now >= keepalive_at:
                yield None
                keepalive_at = now + holding.keepalive_s
            pause = min(POLICY_RECHECK_S, keepalive_at - now, until - now)
            await holding.watcher.wait(ticket, holding.clock.real_s(max(pause, 0.0)))

    async def _audit_checkpoint(
        self, recipient: str, request: federation_pb2.PullRequest, witness: int
    ) -> tuple[federation_pb2.SignedAuditCheckpoint, int]:
        """A checkpoint of this node's audit log for `recipient`, with this log's digest at
        `witness`; and its count (the next witness). Signed with the newest key published at or
        before the caller's cursor: one it knows already."""
        assert self._audit is not None
        head = await self._audit.head()
        schedule = await self._store.key_schedule(self._keyring())
        signed = sign_checkpoint(
            key=key_for(request.after_seq + 1, schedule),
            origin=self._node_id,
            recipient=recipient,
            record_count=head.count,
            head_digest=head.digest,
            witness_count=witness,
            witness_digest=await self._audit.digest_at(witness) if witness else None,
            at=self._now(),
        )
        return signed, head.count

    async def _check_history(
        self, recipient: str, request: federation_pb2.PullRequest, last: int
    ) -> None:
        """FailedPrecondition when the caller applied a history this log no longer has: it
        stands past this log's end, or this log's chain at its seq is not the one it applied."""
        seq = request.after_seq
        resync = f"run `hashex sync resync {self._node_id}` on {recipient}"
        if seq > last:
            raise FailedPrecondition(
                f"history diverged: this node's change log ends at seq {last}, before seq {seq} "
                f"that {recipient} applied (this node was restored from an older backup); "
                f"{resync}"
            )
        if request.after_chain and await self._store.chain_at(seq) != request.after_chain:
            raise FailedPrecondition(
                f"history diverged: this node's change log up to seq {seq} is not the one "
                f"{recipient} applied (restored from a backup, or forked); {resync}"
            )


def _generation(policy: SharingPolicy | None) -> int:
    return policy.generation if policy is not None else 0
