"""Assembles the sync service in-process: the log sender and its servicers, peer clients, and
one puller task per pinned peer, kept in step with the pinned cards and the node's signing keys
by a small supervisor loop.

The node (`hashex node up`) calls `start_sync` with what it already owns (config, database,
the registry's store and index, trust store) and serves `RunningSync.bindings()` on its
gateway; `admin_binding()` also belongs on the loopback port, where `hashex sync status` asks.
The database must be migrated already (`services.sync.store.MIGRATIONS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from services.core import tls
from services.core.audit.store import AuditStore
from services.core.clock import SYSTEM_CLOCK, Clock
from services.core.config import NodeConfig
from services.core.db.pool import Database
from services.core.errors import NotFound
from services.core.peer_card import PeerCard
from services.core.server import ServiceBinding
from services.core.signing import Keyring
from services.registry.store import RegistryStore
from services.sync.audit_checkpoints import Contradiction
from services.sync.batches import BatchRejected, VerifiedBatch
from services.sync.flags.delivery import FlagDelivery
from services.sync.flags.engine import EngineSettings, FlagEngine, run_engine
from services.sync.flags.reader import LinkageReader
from services.sync.flags.servicer import FlagsServicer
from services.sync.flags.states import FlagStates
from services.sync.log_watcher import LogWatcher
from services.sync.peer_client import PeerClients, PeerDirectory
from services.sync.policy import SharingPolicy, load_policy
from services.sync.puller import (
    IndexSink,
    OnAuditContradiction,
    OnQuarantined,
    OnRejected,
    PeerPuller,
    PullDeps,
    PullSettings,
)
from services.sync.sender import Holding, LogSender
from services.sync.servicer import AdminServicer, FederationServicer, LocalLookup
from services.sync.status import SyncStatus, combine
from services.sync.store import SyncStore

_log = logging.getLogger(__name__)


async def _log_rejection(peer_id: str, rejected: BatchRejected) -> None:
    _log.warning("rejected a batch from %s (%s): %s", peer_id, rejected.reason, rejected)


async def _quarantine_logged_only(peer_id: str, batch: VerifiedBatch) -> None:
    """The puller logs every quarantine itself; a node passes an auditor instead."""


async def _contradiction_logged_only(peer_id: str, found: Contradiction) -> None:
    """The puller logs every contradiction itself; a node passes an auditor instead."""


class PullerSupervisor:
    """One puller task per pinned peer: started when a peer is pinned, stopped when it is
    removed; also logs signing keys added to the key directory as rotations."""

    def __init__(
        self,
        *,
        deps: PullDeps,
        cards: PeerDirectory,
        keyring: Callable[[], Keyring],
        interval_s: float,
        grace_s: float,
    ) -> None:
        self.deps = deps
        self._cards = cards
        self._keyring = keyring
        self._interval_s = interval_s
        self._grace_s = grace_s
        self.pullers: dict[str, PeerPuller] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def cards(self) -> dict[str, PeerCard]:
        return self._cards.peers()

    async def reconcile(self) -> None:
        """Log new signing keys; start pullers for newly pinned peers, stop removed ones."""
        keyring = self._keyring()
        added = await self.deps.store.log_key_rotations(keyring)
        if added:
            _log.info("logged key rotation(s) %s", ", ".join(added))
        revoked = await self.deps.store.log_key_revocations(keyring)
        if revoked:
            _log.warning("logged the revocation of signing key(s) %s", ", ".join(revoked))
        pinned = set(self._cards.peers())
        for peer_id in sorted(pinned - set(self._tasks)):
            puller = self.pullers.setdefault(peer_id, PeerPuller(peer_id, self.deps))
            self._tasks[peer_id] = asyncio.create_task(puller.run(), name=f"pull-{peer_id}")
        for peer_id in sorted(set(self._tasks) - pinned):
            self.pullers[peer_id].stop()
            await _finish(self._tasks.pop(peer_id), self._grace_s)

    def start(self) -> None:
        self._loop = asyncio.create_task(self._supervise(), name="sync-supervisor")

    def wake_pullers(self) -> None:
        for puller in self.pullers.values():
            puller.wake()

    async def stop(self) -> None:
        """Stop the loop, let each puller finish its batch in flight."""
        self._stop.set()
        if self._loop is not None:
            await _finish(self._loop, self._grace_s)
        for puller in self.pullers.values():
            puller.stop()
        for task in self._tasks.values():
            await _finish(task, self._grace_s)

    def running_peers(self) -> list[str]:
        """The peers whose puller task has not ended."""
        return sorted(peer_id for peer_id, task in self._tasks.items() if not task.done())

    async def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                await self.reconcile()
            except Exception:  # a bad card or key file must not stop replication
                _log.exception("sync supervisor pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stop.wait(), timeout=self.deps.clock.real_s(self._interval_s)
                )


@dataclass
class RunningSync:
    config: NodeConfig
    store: SyncStore
    clients: PeerClients
    federation: FederationServicer
    admin: AdminServicer
    supervisor: PullerSupervisor
    watcher: LogWatcher
    flags: FlagsServicer
    flag_delivery: FlagDelivery
    # The flag engine's task; None when no linkage reader was given.
    flag_engine: asyncio.Task[None] | None = None

    @property
    def pullers(self) -> dict[str, PeerPuller]:
        return self.supervisor.pullers

    def bindings(self) -> list[ServiceBinding]:
        """What the gateway serves for sync: Federation (peers), Admin (operators) and Flags
        (units)."""
        return [self.federation.binding(), self.admin.binding(), self.flags.binding()]

    def flags_binding(self) -> ServiceBinding:
        return self.flags.binding()

    def federation_binding(self) -> ServiceBinding:
        return self.federation.binding()

    def admin_binding(self) -> ServiceBinding:
        return self.admin.binding()

    async def status(self) -> SyncStatus:
        return await _status(self.config.node_id, self.store, self.supervisor)

    async def reconcile(self) -> None:
        await self.supervisor.reconcile()

    async def resync(self, peer_id: str) -> int:
        return await _resync(peer_id, self.store, self.supervisor)

    def wake_pullers(self) -> None:
        self.supervisor.wake_pullers()

    async def release_pulls(self) -> None:
        """End the pulls peers hold open here (call before stopping the server serving them,
        so that it need not wait out its grace period for them)."""
        await self.watcher.close()
        await self.flag_delivery.close()

    async def stop(self) -> None:
        """End held pulls and flag watches, stop the flag engine and the pullers (each finishes
        its batch in flight), close the peer channels."""
        await self.release_pulls()
        if self.flag_engine is not None:
            self.flag_engine.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.flag_engine
        await self.supervisor.stop()
        await self.clients.close()


async def _resync(peer_id: str, store: SyncStore, supervisor: PullerSupervisor) -> int:
    """`hashex sync resync`: restart the peer from seq 1 (SyncStore.begin_resync), drop its
    withdrawn media from the PDQ index, and pull now. Returns the media withdrawn."""
    if peer_id not in supervisor.cards() and peer_id not in await store.cursors():
        raise NotFound(f"no peer {peer_id!r}: it is not pinned and nothing was pulled from it")
    withdrawn = await store.begin_resync(peer_id)
    await supervisor.deps.index.index_replicated(added=[], removed_rows=withdrawn)
    _log.warning(
        "resync of %s: %d of its media withdrawn until its log is pulled again from seq 1",
        peer_id,
        len(withdrawn),
    )
    puller = supervisor.pullers.get(peer_id)
    if puller is not None:
        puller.state.peer_last_seq = 0  # a restored peer's head may be lower: learned afresh
        puller.wake()
    return len(withdrawn)


async def _status(node_id: str, store: SyncStore, supervisor: PullerSupervisor) -> SyncStatus:
    cards, cursors = supervisor.cards(), await store.cursors()
    return combine(
        node_id=node_id,
        local_last_seq=await store.last_seq(),
        cards=cards,
        cursors=cursors,
        states={peer_id: p.state for peer_id, p in supervisor.pullers.items()},
        audit_alarms=await store.audit_alarms(),
        learned={p: await store.learned_keys(p) for p in sorted(set(cards) | set(cursors))},
        revocations={p: await store.learned_revocations(p) for p in set(cards) | set(cursors)},
    )


async def start_sync(
    config: NodeConfig,
    *,
    database: Database,
    records: RegistryStore,
    index: IndexSink,
    lookup: LocalLookup,
    trust: PeerDirectory,
    on_rejected: OnRejected = _log_rejection,
    on_quarantined: OnQuarantined = _quarantine_logged_only,
    on_audit_contradiction: OnAuditContradiction = _contradiction_logged_only,
    identity: Callable[[], tls.CertifiedKey] | None = None,
    keyring: Callable[[], Keyring] | None = None,
    policy_for: Callable[[str], SharingPolicy | None] | None = None,
    run_pullers: bool = True,
    linkage: LinkageReader | None = None,
    min_linked_media: int = 3,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    rng: random.Random | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> RunningSync:
    """Start sync on a migrated database. `records` is the registry's store (replicated records
    are applied through it), `index` the registry's PDQ index to keep in step and `lookup` the
    node's own lookup (PeerLookup answers with it). Defaults read the data directory:
    tls/node.pem+key (identity, re-read so a renewed certificate is used on the next channel),
    keys/signing (re-read each supervisor pass, so a key added by `hashex node rotate-key` is
    logged within `pull_interval_s`), policy/<peer>.toml. `on_rejected(peer_id, rejection)` is
    awaited for every rejected batch and `on_quarantined(peer_id, batch)` for every applied
    batch with quarantined entries, `on_audit_contradiction(peer_id, found)` for every new
    contradiction in a peer's audit checkpoints (the node audits all three).
    `run_pullers=False` serves only (tests drive pullers themselves). `linkage` is the
    registry's linkage read API (RegistryStore): the flag engine runs on it while sync runs
    (None: flags are served and their states replicate, but no flag is raised).
    `min_linked_media` is the node's `[linkage]` setting NEW_MATERIAL is held to. `clock` times
    holds, keep-alives, pauses and deadlines."""
    store = SyncStore(database=database, records=records)
    if keyring is None:
        keys_dir = config.signing_keys_dir
        keyring = lambda: Keyring.load(keys_dir)  # noqa: E731
    identity = identity or (
        lambda: tls.load_certified_key(
            certificate_path=config.tls_dir / "node.pem", key_path=config.tls_dir / "node.key"
        )
    )
    policy_for = policy_for or (lambda peer_id: load_policy(config.policy_dir, peer_id))
    clients = PeerClients(
        trust=trust, identity=identity, max_message_bytes=config.max_message_bytes
    )
    watcher = LogWatcher(database)
    holding = Holding(
        watcher, max_s=config.pull_hold_s, keepalive_s=config.pull_keepalive_s, clock=clock
    )
    sender = LogSender(
        node_id=config.node_id,
        store=store,
        keyring=keyring,
        policy_for=policy_for,
        holding=holding,
        audit=AuditStore(database),
        now=now,
    )
    federation = FederationServicer(
        node_id=config.node_id,
        sender=sender,
        lookup=lookup,
        policy_for=policy_for,
        held_checkpoint=store.audit_checkpoint,
    )
    deps = PullDeps(
        node_id=config.node_id,
        store=store,
        index=index,
        cards=trust,
        open_pull=lambda peer_id, request, timeout_s: clients.pull(
            peer_id, request, timeout_s=timeout_s
        ),
        on_rejected=on_rejected,
        on_quarantined=on_quarantined,
        on_audit_contradiction=on_audit_contradiction,
        settings=PullSettings(
            interval_s=config.pull_interval_s,
            backoff_max_s=config.pull_backoff_max_s,
            deadline_s=config.pull_deadline_s,
            hold_s=config.pull_hold_s,
        ),
        now=now,
        rng=rng or random.Random(),
        clock=clock,
    )
    supervisor = PullerSupervisor(
        deps=deps,
        cards=trust,
        keyring=keyring,
        interval_s=config.pull_interval_s,
        grace_s=config.shutdown_grace_s,
    )
    admin = AdminServicer(
        status=lambda: _status(config.node_id, store, supervisor),
        quarantine=store.quarantine,
        resync=lambda peer_id: _resync(peer_id, store, supervisor),
    )
    delivery = FlagDelivery(database=database, clock=clock)
    flags = FlagsServicer(
        delivery=delivery, states=FlagStates(database=database, node_id=config.node_id)
    )
    await store.log_key_rotations(keyring())
    await store.log_key_revocations(keyring())
    if run_pullers:
        supervisor.start()
    engine_task = _start_flag_engine(
        database, linkage, EngineSettings(config.node_id, min_linked_media), clock, now
    )
    return RunningSync(
        config,
        store,
        clients,
        federation,
        admin,
        supervisor,
        watcher,
        flags,
        delivery,
        engine_task,
    )


def _start_flag_engine(
    database: Database,
    linkage: LinkageReader | None,
    settings: EngineSettings,
    clock: Clock,
    now: Callable[[], datetime],
) -> asyncio.Task[None] | None:
    if linkage is None:
        _log.info("no linkage reader given: the flag engine is not started (no flag is raised)")
        return None
    engine = FlagEngine(database=database, reader=linkage, settings=settings, clock=clock, now=now)
    return asyncio.create_task(run_engine(engine), name="flag-engine")


async def _finish(task: asyncio.Task[None], grace_s: float) -> None:
    """Wait for `task` to end by itself within `grace_s`, else cancel it."""
    done, _ = await asyncio.wait({task}, timeout=grace_s)
    if not done:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
