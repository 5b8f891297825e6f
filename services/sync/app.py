"""Assembles the sync service in-process: migrations, the log sender and its servicers, peer
clients, and one puller task per pinned peer, kept in step with the pinned cards and the node's
signing keys by a small supervisor loop.

The node (`hashex node up`) calls `start_sync` with what it already owns (config, pool, registry,
trust store) and serves `RunningSync.bindings()` on its gateway; `admin_binding()` also belongs on
the loopback port, where `hashex sync status` asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.core import tls
from services.core.config import NodeConfig
from services.core.server import ServiceBinding
from services.core.signing import Keyring
from services.sync.batches import BatchRejected
from services.sync.peer_client import PeerClients, PeerDirectory
from services.sync.policy import SharingPolicy, load_policy
from services.sync.puller import IndexSink, OnRejected, PeerPuller, PullDeps, PullSettings
from services.sync.sender import LogSender
from services.sync.servicer import AdminServicer, FederationServicer, LocalLookup
from services.sync.status import SyncStatus, combine
from services.sync.store import SyncStore, migrate

_log = logging.getLogger(__name__)


async def _log_rejection(peer_id: str, rejected: BatchRejected) -> None:
    _log.warning("rejected a batch from %s (%s): %s", peer_id, rejected.reason, rejected)


@dataclass
class RunningSync:
    config: NodeConfig
    store: SyncStore
    clients: PeerClients
    federation: FederationServicer
    admin: AdminServicer
    pullers: dict[str, PeerPuller] = field(default_factory=dict)
    _deps: PullDeps | None = None
    _keyring: Callable[[], Keyring] | None = None
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _supervisor: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def bindings(self) -> list[ServiceBinding]:
        """What the gateway serves for sync: Federation (peers) and Admin (operators)."""
        return [self.federation.binding(), self.admin.binding()]

    def federation_binding(self) -> ServiceBinding:
        return self.federation.binding()

    def admin_binding(self) -> ServiceBinding:
        return self.admin.binding()

    async def status(self) -> SyncStatus:
        return combine(
            node_id=self.config.node_id,
            local_last_seq=await self.store.last_seq(),
            cards=self.clients_cards(),
            cursors=await self.store.cursors(),
            states={peer_id: p.state for peer_id, p in self.pullers.items()},
        )

    def clients_cards(self) -> dict[str, Any]:
        return self._deps.cards.peers() if self._deps else {}

    async def reconcile(self) -> None:
        """Log new signing keys; start pullers for newly pinned peers, stop removed ones."""
        if self._keyring is not None:
            added = await self.store.log_key_rotations(self._keyring())
            if added:
                _log.info("logged key rotation(s) %s", ", ".join(added))
        if self._deps is None:
            return
        pinned = set(self._deps.cards.peers())
        for peer_id in sorted(pinned - set(self._tasks)):
            puller = self.pullers.setdefault(peer_id, PeerPuller(peer_id, self._deps))
            self._tasks[peer_id] = asyncio.create_task(puller.run(), name=f"pull-{peer_id}")
        for peer_id in sorted(set(self._tasks) - pinned):
            self.pullers[peer_id].stop()
            await _finish(self._tasks.pop(peer_id), self.config.shutdown_grace_s)

    def wake_pullers(self) -> None:
        for puller in self.pullers.values():
            puller.wake()

    async def stop(self) -> None:
        """Stop the supervisor, let each puller finish its batch in flight, close channels."""
        self._stop.set()
        if self._supervisor is not None:
            await _finish(self._supervisor, self.config.shutdown_grace_s)
        for puller in self.pullers.values():
            puller.stop()
        for task in self._tasks.values():
            await _finish(task, self.config.shutdown_grace_s)
        self._tasks.clear()
        await self.clients.close()

    async def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                await self.reconcile()
            except Exception:  # a bad card or key file must not stop replication
                _log.exception("sync supervisor pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.config.pull_interval_s)


async def start_sync(
    config: NodeConfig,
    *,
    pool: Any,
    index: IndexSink,
    lookup: LocalLookup,
    trust: PeerDirectory,
    on_rejected: OnRejected = _log_rejection,
    identity: Callable[[], tls.CertifiedKey] | None = None,
    keyring: Callable[[], Keyring] | None = None,
    policy_for: Callable[[str], SharingPolicy | None] | None = None,
    run_pullers: bool = True,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    rng: random.Random | None = None,
) -> RunningSync:
    """Start sync on an open pool whose registry migrations are applied. Defaults read the data
    directory: tls/node.pem+key (identity, re-read so a renewed certificate is used on the next
    channel), keys/signing (re-read each supervisor pass to log rotations), policy/<peer>.toml.
    `on_rejected(peer_id, rejection)` is awaited for every rejected batch (the node audits it).
    `run_pullers=False` serves only (tests drive pullers themselves). `index` is the registry's
    PDQ index to keep in step and `lookup` the node's own lookup (PeerLookup answers with it).
    The key directory is read again each pass, so a key added by `hashex node rotate-key` is
    logged within `pull_interval_s`."""
    await migrate(pool)
    store = SyncStore(pool)
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
    sender = LogSender(node_id=config.node_id, store=store, keyring=keyring, policy_for=policy_for)
    federation = FederationServicer(
        node_id=config.node_id, sender=sender, lookup=lookup, policy_for=policy_for
    )
    running = RunningSync(
        config, store, clients, federation, AdminServicer(lambda: running.status())
    )
    running._keyring = keyring
    running._deps = PullDeps(
        node_id=config.node_id,
        store=store,
        index=index,
        cards=trust,
        open_pull=lambda peer_id, request, timeout_s: clients.pull(
            peer_id, request, timeout_s=timeout_s
        ),
        on_rejected=on_rejected,
        settings=PullSettings(
            interval_s=config.pull_interval_s,
            backoff_max_s=config.pull_backoff_max_s,
            deadline_s=config.pull_deadline_s,
        ),
        now=now,
        rng=rng or random.Random(),
    )
    await store.log_key_rotations(keyring())
    if run_pullers:
        running._supervisor = asyncio.create_task(running._supervise(), name="sync-supervisor")
    return running


async def _finish(task: asyncio.Task[None], grace_s: float) -> None:
    """Wait for `task` to end by itself within `grace_s`, else cancel it."""
    done, _ = await asyncio.wait({task}, timeout=grace_s)
    if not done:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
