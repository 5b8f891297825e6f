"""Refused calls aggregated per caller and window, so that a flood of refusals costs a bounded
number of audit rows instead of one row per call.

A refusal is a call that ended with one of REFUSED_STATUSES (whoever refused it: identity,
role, rate limit, calls in flight, an unknown method). Per key (caller, fingerprint, role,
method, status) a window of WINDOW_S seconds opens with the first refusal, which is recorded at
once as an ordinary record; every further refusal of that key within the window is only
counted, and when the window ends one record stands for all of them (`calls` = their number,
`at` = the first of them, request and response messages summed, duration the longest, request
digest SHA-256 over their request digests in order). So one key costs at most two rows per
window however many calls it makes. Both rows are ordinary records of the hash chain.

Keys are bounded (MAX_OPEN_WINDOWS): an unauthenticated caller chooses the identity it presents,
so once that many windows are open, further new keys are counted into one overflow window per
status whose record names the caller `*` and the method `*`.

Pure: no grpc, no SQL; time is passed in (monotonic seconds).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field, replace

from services.core.audit.chain import AuditEntry

# One aggregated record per caller, method and outcome per minute at most (plus the first).
WINDOW_S = 60.0
MAX_OPEN_WINDOWS = 1_024
REFUSED_STATUSES = frozenset(
    {"UNAUTHENTICATED", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "UNIMPLEMENTED"}
)
OVERFLOW_CALLER = "*"

_Key = tuple[str, str, str, str, str]


@dataclass
class _Window:
    opened_at: float
    first: AuditEntry | None = None
    calls: int = 0
    request_messages: int = 0
    response_messages: int = 0
    longest_ms: int = 0
    digests: hashlib._Hash = field(default_factory=hashlib.sha256)

    def add(self, entry: AuditEntry) -> None:
        if self.first is None:
            self.first = entry
        self.calls += entry.calls
        self.request_messages += entry.request_messages
        self.response_messages += entry.response_messages
        self.longest_ms = max(self.longest_ms, entry.duration_ms)
        self.digests.update(entry.request_digest)

    def aggregate(self) -> AuditEntry | None:
        """The one record for the refusals counted (None: none were)."""
        if self.first is None:
            return None
        return replace(
            self.first,
            duration_ms=self.longest_ms,
            request_messages=self.request_messages,
            response_messages=self.response_messages,
            request_digest=self.digests.digest(),
            calls=self.calls,
        )


@dataclass(frozen=True)
class Admitted:
    """What to write now: records of windows that ended (`due`, oldest first), then `entry`
    itself when it opened a window (None: it was only counted)."""

    due: list[AuditEntry]
    entry: AuditEntry | None


class RefusalWindows:
    def __init__(self, *, window_s: float = WINDOW_S, max_open: int = MAX_OPEN_WINDOWS) -> None:
        self._window_s = window_s
        self._max_open = max_open
        # Every window lasts window_s, so opening order is closing order.
        self._open: OrderedDict[_Key, _Window] = OrderedDict()

    @staticmethod
    def is_refusal(entry: AuditEntry) -> bool:
        return entry.status in REFUSED_STATUSES

    def admit(self, entry: AuditEntry, now: float) -> Admitted:
        due = self.due(now)
        key = _key_of(entry)
        if key not in self._open and len(self._open) >= self._max_open:
            key = (OVERFLOW_CALLER, "", "none", "*", entry.status)
            entry = replace(entry, caller=OVERFLOW_CALLER, fingerprint="", role="none", method="*")
        window = self._open.get(key)
        if window is not None:
            window.add(entry)
            return Admitted(due, None)
        self._open[key] = _Window(opened_at=now)
        return Admitted(due, entry)

    def due(self, now: float) -> list[AuditEntry]:
        """Records of the windows that have ended by `now`; those windows are closed."""
        ended: list[AuditEntry] = []
        while self._open:
            key, window = next(iter(self._open.items()))
            if now < window.opened_at + self._window_s:
                break
            del self._open[key]
            if (aggregate := window.aggregate()) is not None:
                ended.append(aggregate)
        return ended

    def close_all(self) -> list[AuditEntry]:
        """Records of every open window (at shutdown), which are all closed."""
        ended = [a for w in self._open.values() if (a := w.aggregate()) is not None]
        self._open.clear()
        return ended


def _key_of(entry: AuditEntry) -> _Key:
    return (entry.caller, entry.fingerprint, entry.role, entry.method, entry.status)
