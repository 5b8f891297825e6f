"""Pulling from peers: one task per pinned peer that pulls, verifies, applies, and backs off.

Each batch is verified against the cursor BEFORE anything in it is parsed, then applied with the
cursor advance in one transaction, so a pull cut anywhere resumes from the last applied batch.
A rejected batch (forged, misaddressed, replayed, out of order, unknown key) applies nothing: it
is counted, reported through the injected callback (the node audits it), and the peer is backed
off; the head it states, once its signature verified, still counts for the lag. An entry of a
verified batch that cannot be applied is quarantined with the batch (services.sync.batches), the
rest of the batch applies, and the callback for quarantines is told (the node audits it too). Time,
sleeping and randomness are injected so tests drive the loop without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from hashex.v1 import federation_pb2
from services.core.clock import SYSTEM_CLOCK, Clock
from services.core.peer_card import PeerCard
from services.registry.model import PdqEntry
from services.sync.audit_checkpoints import (
    CheckpointRefused,
    Contradiction,
    HeldCheckpoint,
    contradiction,
    verify_checkpoint,
)
from services.sync.batches import (
    BatchRejected,
    Checkpoint,
    Cursor,
    VerifiedBatch,
    verify_batch_in_steps,
)
from services.sync.divergence import Divergence, HistoryDiverged, is_divergence, locate
from services.sync.origin_keys import OriginKey, origin_keys, published, revoked
from services.sync.store import SyncStore

_log = logging.getLogger(__name__)

OnRejected = Callable[[str, BatchRejected], Awaitable[None]]
OnQuarantined = Callable[[str, VerifiedBatch], Awaitable[None]]
OnAuditContradiction = Callable[[str, Contradiction], Awaitable[None]]


async def _nothing_more(peer_id: str, found: Contradiction) -> None:
    """The puller logs every contradiction; a node also audits it."""


OpenPull = Callable[[str, federation_pb2.PullRequest, float], Any]


class PeerCards(Protocol):
    def peers(self) -> dict[str, PeerCard]: ...


class IndexSink(Protocol):
    """The registry's PDQ index (services.registry.registry.Registry.index_replicated)."""

    async def index_replicated(
        self, *, added: Sequence[PdqEntry], removed_rows: Sequence[int]
    ) -> None: ...


@dataclass
class PeerState:
    """What `hashex sync status` shows of one peer beyond its stored cursor."""

    peer_id: str
    last_success_at: datetime | None = None
    last_error: str = ""
    last_error_at: datetime | None = None
    rejected_batches: int = 0
    failures: int = 0
    peer_last_seq: int = 0


@dataclass
class PullSettings:
    """`hold_s`: how long `run`'s pulls ask the peer to stay open once caught up (0: poll
    every `interval_s`, as with a peer of an older release that never holds)."""

    interval_s: float = 2.0
    backoff_max_s: float = 60.0
    deadline_s: float = 1200.0
    max_entries: int = 1_000
    hold_s: float = 0.0


@dataclass
class PullDeps:
    """Everything a puller talks to, injected."""

    node_id: str
    store: SyncStore
    index: IndexSink
    cards: PeerCards
    open_pull: OpenPull
    on_rejected: OnRejected
    on_quarantined: OnQuarantined
    on_audit_contradiction: OnAuditContradiction = _nothing_more
    settings: PullSettings = field(default_factory=PullSettings)
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    rng: random.Random = field(default_factory=random.Random)
    # What pauses, backoff and pull deadlines are timed with (settings are in its seconds).
    clock: Clock = SYSTEM_CLOCK


# How long one question about a checkpoint may take (services.sync.divergence).
PROBE_DEADLINE_S = 60.0


class PeerPuller:
    def __init__(self, peer_id: str, deps: PullDeps) -> None:
        self.peer_id = peer_id
        self.state = PeerState(peer_id)
        self._deps = deps
        self._wake = asyncio.Event()
        self._stopping = False
        # Whether the peer held the last pull open (then the next one starts at once).
        self.held = False
        # The divergence last located, and the cursor seq it was found for.
        self._diverged: tuple[int, Divergence] | None = None

    async def pull_once(self, *, hold: bool = False) -> int:
        """Pull until the peer's stream ends; returns the batches applied. Raises BatchRejected
        (after reporting it) or whatever the call or the database raised. `hold`: ask the peer
        to keep the stream open once caught up (settings.hold_s) and send batches as its log
        grows; each keep-alive counts as a success (lag and "last OK" stay true meanwhile).

        Pipelined: batch k+1 is received, verified and parsed while batch k is applied. It is
        verified against the cursor k leads to, known as soon as k verified, and applied only
        once k committed, so batches still commit strictly in order, each with its cursor. On
        any failure the batch already being applied finishes first, as it did when the next
        one was read only afterwards, and nothing after it is applied."""
        deps = self._deps
        card = deps.cards.peers().get(self.peer_id)
        if card is None:
            raise LookupError(f"{self.peer_id} is no longer a pinned peer")
        cursor = await deps.store.cursor(self.peer_id)
        await deps.store.thin_checkpoints(self.peer_id)
        keys = origin_keys(
            card.signing_keys,
            await deps.store.learned_keys(self.peer_id),
            await deps.store.learned_revocations(self.peer_id),
        )
        held = await deps.store.audit_checkpoint(self.peer_id)
        request = federation_pb2.PullRequest(
            after_seq=cursor.seq,
            after_digest=cursor.digest,
            policy_generation=cursor.generation,
            max_entries_per_batch=deps.settings.max_entries,
            after_chain=cursor.chain,
            wait_s=int(deps.settings.hold_s) if hold else 0,
            audit_checkpoint_count=held.record_count if held else 0,
        )
        self.held = False
        stream = deps.open_pull(self.peer_id, request, deps.clock.real_s(deps.settings.deadline_s))
        applier = _InOrder(self._apply)
        try:
            try:
                async for response in _responses(stream):
                    if self._stopping:  # a held pull outlives stop(): apply nothing more
                        break
                    if response.HasField("audit_checkpoint"):
                        held = await self._witness(
                            response.audit_checkpoint, _unrevoked(keys), held
                        )
                        continue
                    if response.HasField("keep_alive"):
                        await applier.finish()  # caught up means applied
                        head = response.keep_alive.origin_last_seq
                        if not self.held and applier.applied == 0:
                            # No batch came to finish a resync (the peer's log may be empty).
                            self._resynced(await deps.store.finish_resync(self.peer_id, head))
                        self.held = True
                        self._caught_up(head)
                        if self._wake.is_set():  # asked to pull afresh (a resync): reconnect
                            self._wake.clear()
                            break
                        continue
                    batch = await self._verified(response.batch, cursor, keys)
                    await applier.start(batch, expected=cursor)
                    cursor = batch.cursor
                    for key in batch.new_keys:
                        keys = published(keys, key.key_id, key.public_key, key.seq)
                    for revocation in batch.revoked_keys:
                        keys = revoked(keys, revocation.key_id, revocation.revoked_from_seq)
            except Exception:
                await applier.finish()  # its own failure, if any, takes precedence
                raise
            await applier.finish()
        except BatchRejected as rejected:
            self.state.rejected_batches += 1
            if rejected.origin_last_seq > self.state.peer_last_seq:
                # Signed by the peer: its head is known even though the batch is refused.
                self.state.peer_last_seq = rejected.origin_last_seq
                await deps.store.record_peer_head(self.peer_id, rejected.origin_last_seq)
            await deps.on_rejected(self.peer_id, rejected)
            raise
        except Exception as error:
            if is_divergence(error):
                raise HistoryDiverged(self.peer_id, await self._divergence(request)) from error
            raise
        finally:
            applier.abandon()  # only when the pull itself was cancelled
            _cancel(stream)
        self._succeeded()
        return applier.applied

    async def _witness(
        self,
        signed: federation_pb2.SignedAuditCheckpoint,
        keys: dict[str, bytes],
        held: HeldCheckpoint | None,
    ) -> HeldCheckpoint | None:
        """Keep the peer's audit checkpoint, or keep and report how it contradicts the one
        held (services.sync.audit_checkpoints); returns the one now held. Neither stops the
        pull."""
        deps = self._deps
        try:
            got = verify_checkpoint(signed, origin=self.peer_id, recipient=deps.node_id, keys=keys)
        except CheckpointRefused as refused:
            _log.warning("audit checkpoint from %s refused: %s", self.peer_id, refused)
            return held
        found = contradiction(held, got)
        if found is None:
            await deps.store.keep_audit_checkpoint(self.peer_id, got.held)
            return got.held
        if await deps.store.record_audit_contradiction(self.peer_id, found):
            _log.error(
                "%s; both signed checkpoints are kept as proof (`hashex sync status`)",
                found.describe(self.peer_id),
            )
            await deps.on_audit_contradiction(self.peer_id, found)
        return held

    async def _divergence(self, refused: federation_pb2.PullRequest) -> Divergence:
        """Where the origin's history parts from the one applied here (found once per cursor:
        each question is a call to the origin)."""
        known = self._diverged
        if known is not None and known[0] == refused.after_seq:
            return known[1]
        checkpoints = await self._deps.store.chain_checkpoints(self.peer_id)
        found = await locate(checkpoints, refused.after_seq, partial(self._agrees, refused))
        self._diverged = (refused.after_seq, found)
        return found

    async def _agrees(self, refused: federation_pb2.PullRequest, point: Checkpoint) -> bool:
        """Whether the origin's chain at `point` is the one applied here: a pull from there is
        accepted (its first answer is all that is read) or refused as diverged."""
        request = federation_pb2.PullRequest(
            after_seq=point.seq,
            after_chain=point.chain,
            policy_generation=refused.policy_generation,
            max_entries_per_batch=1,
        )
        stream = self._deps.open_pull(
            self.peer_id, request, self._deps.clock.real_s(PROBE_DEADLINE_S)
        )
        try:
            async for _ in _responses(stream):
                break
        except Exception as error:
            if is_divergence(error):
                return False
            raise
        finally:
            _cancel(stream)
        return True

    def _resynced(self, swept_media: int | None) -> None:
        if swept_media is not None:
            _log.info(
                "resync of %s complete: %d of its media it no longer holds deleted",
                self.peer_id,
                swept_media,
            )

    def _caught_up(self, origin_last_seq: int) -> None:
        self.state.peer_last_seq = max(self.state.peer_last_seq, origin_last_seq)
        self._succeeded()

    def _succeeded(self) -> None:
        if self.state.failures:
            _log.info("pull from %s works again", self.peer_id)
        self.state.last_success_at = self._deps.now()
        self.state.last_error = ""
        self.state.failures = 0

    async def _verified(
        self, signed: federation_pb2.SignedBatch, cursor: Cursor, keys: dict[str, OriginKey]
    ) -> VerifiedBatch:
        """Verification and parsing are CPU work on the event loop: done in steps, with a pause
        after each so the batch before this one keeps talking to the database meanwhile."""
        steps = verify_batch_in_steps(
            signed, origin=self.peer_id, recipient=self._deps.node_id, cursor=cursor, keys=keys
        )
        while True:
            try:
                next(steps)
            except StopIteration as done:
                batch: VerifiedBatch = done.value
                return batch
            await asyncio.sleep(0)

    async def _apply(self, batch: VerifiedBatch, expected: Cursor) -> None:
        deps = self._deps
        result = await deps.store.apply_batch(peer_id=self.peer_id, batch=batch, expected=expected)
        await deps.index.index_replicated(added=result.added, removed_rows=result.removed_rows)
        self._resynced(result.swept_media)
        self.state.peer_last_seq = max(self.state.peer_last_seq, batch.origin_last_seq)
        if batch.quarantined:
            # Seqs only: a reason may name a media id, which may itself be a hash.
            _log.warning(
                "quarantined %d entries of %s's batch %d-%d (seq %s); the rest applied, see "
                "`hashex sync quarantine` for why",
                len(batch.quarantined),
                self.peer_id,
                batch.first_seq,
                batch.last_seq,
                ", ".join(str(q.seq) for q in batch.quarantined[:10]),
            )
            await deps.on_quarantined(self.peer_id, batch)

    def backoff_s(self) -> float:
        """Exponential in consecutive failures, capped, with jitter (half to full) so peers that
        failed together do not retry together."""
        settings = self._deps.settings
        ceiling = min(settings.backoff_max_s, settings.interval_s * 2.0**self.state.failures)
        return ceiling * (0.5 + 0.5 * self._deps.rng.random())

    async def run(self, sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        """Pull, pause, repeat until `stop()`; failures back off. A pull the peer held open ends
        when its hold does; the next one starts at once."""
        pause = sleep or self._sleep
        clock = self._deps.clock
        while not self._stopping:
            started = clock.monotonic()
            try:
                await self.pull_once(hold=self._deps.settings.hold_s > 0)
                # A held pull ends when its hold does, or when the peer's policy changes: pull
                # again at once. A peer that never holds, or a held pull over within a second:
                # pause as for polling, so that no peer makes this loop spin.
                short = clock.monotonic() - started < min(self._deps.settings.interval_s, 1.0)
                delay = self._deps.settings.interval_s if short or not self.held else 0.0
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any failure of one peer only delays that peer
                self._record_failure(error)
                delay = self.backoff_s()
            if not self._stopping and delay > 0:
                await pause(delay)

    def wake(self) -> None:
        """Pull now instead of waiting out the pause (a held pull reconnects at its next
        keep-alive)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self._deps.clock.real_s(seconds))
        self._wake.clear()

    def _record_failure(self, error: Exception) -> None:
        """Count and keep the failure; log it when pulls start failing or fail differently, not
        at every retry."""
        described = _describe(error)
        if self.state.failures == 0 or described != self.state.last_error:
            _log.warning("pull from %s failed: %s (retrying with backoff)", self.peer_id, described)
        self.state.failures += 1
        self.state.last_error = described
        self.state.last_error_at = self._deps.now()


class _InOrder:
    """Applies verified batches one at a time, in order, each in a task of its own so that the
    puller can receive and verify the next batch meanwhile."""

    def __init__(self, apply: Callable[[VerifiedBatch, Cursor], Coroutine[Any, Any, None]]) -> None:
        self._apply = apply
        self._task: asyncio.Task[None] | None = None
        self.applied = 0

    async def start(self, batch: VerifiedBatch, *, expected: Cursor) -> None:
        """Apply `batch` once the batch before it is applied (its failure is raised here)."""
        await self.finish()
        self._task = asyncio.create_task(self._apply(batch, expected))

    async def finish(self) -> None:
        """Wait until the batch being applied, if any, is committed."""
        task, self._task = self._task, None
        if task is not None:
            await task  # cancelling this wait cancels the task too
            self.applied += 1

    def abandon(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def _cancel(stream: Any) -> None:
    """End a pull's stream (a gRPC call; a test's fake may have nothing to cancel)."""
    cancel = getattr(stream, "cancel", None)
    if callable(cancel):
        cancel()


async def _responses(stream: Any) -> AsyncIterator[federation_pb2.PullResponse]:
    async for response in stream:
        yield response


def _describe(error: Exception) -> str:
    """A short, safe description: the rejection, the gRPC status, or the error's text."""
    if isinstance(error, BatchRejected):
        return f"batch rejected ({error.reason}): {error}"
    if isinstance(error, HistoryDiverged):
        return str(error)
    code, details = getattr(error, "code", None), getattr(error, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return f"{type(error).__name__}: {error}"


def _unrevoked(keys: dict[str, OriginKey]) -> dict[str, bytes]:
    """The keys an audit checkpoint may be signed with: it states the origin's log now, so no
    key revoked from any seq on vouches for it."""
    return {k: v.public_key for k, v in keys.items() if not v.revoked_from_seq}
