"""The origin's side of Federation.Pull: this node's change log after the caller's cursor, as
signed batches addressed to the caller and filtered by this node's policy for it.

A caller whose last batch was filtered under an older policy generation than the current one is
re-offered the log from seq 1 under the new generation (entries a wider policy now allows reach
it; re-applying what it holds changes nothing). The chain continues from the caller's digest
either way. A caller that applied a history this log no longer has (this node was restored from
a backup, or its log forked) is refused with FAILED_PRECONDITION naming the seq, checked against
the log chain the caller sends. Pages of the log are read as the stream is consumed, so a long
catch-up never holds the whole log in memory. No gRPC here: the servicer converts and maps errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from hashex.v1 import federation_pb2
from services.core.errors import FailedPrecondition
from services.core.signing import Keyring
from services.sync.batches import BatchChain, entries_per_batch
from services.sync.policy import SharingPolicy
from services.sync.store import SyncStore

PolicyFor = Callable[[str], SharingPolicy | None]


class LogSender:
    def __init__(
        self,
        *,
        node_id: str,
        store: SyncStore,
        keyring: Callable[[], Keyring],
        policy_for: PolicyFor,
    ) -> None:
        self._node_id = node_id
        self._store = store
        self._keyring = keyring
        self._policy_for = policy_for

    async def batches_for(
        self, recipient: str, request: federation_pb2.PullRequest
    ) -> AsyncIterator[federation_pb2.SignedBatch]:
        """Signed batches up to the log's end as it stands when the pull starts."""
        max_entries = entries_per_batch(request.max_entries_per_batch)
        policy = self._policy_for(recipient)
        current = policy.generation if policy is not None else 0
        if request.policy_generation < current:
            after, generation = 0, current
        else:
            # Never lower the caller's generation (a policy file recreated from scratch restarts
            # its count); the current policy filters either way.
            after, generation = request.after_seq, request.policy_generation
        last = await self._store.last_seq()
        await self._check_history(recipient, request, last)
        chain = BatchChain(
            origin=self._node_id,
            recipient=recipient,
            policy=policy,
            generation=generation,
            previous_digest=request.after_digest,
            previous_chain=await self._store.chain_at(after) or b"",
            schedule=await self._store.key_schedule(self._keyring()),
            max_entries=max_entries,
        )
        while after < last:
            rows = await self._store.read_log(after_seq=after, limit=min(max_entries, last - after))
            if not rows:
                break
            for batch in chain.batches(rows, last):
                yield batch
            after = rows[-1].seq

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
