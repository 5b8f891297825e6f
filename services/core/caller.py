"""Who is calling: the identity the gateway verified for the call in progress.

The gateway sets it around each servicer call; servicers that answer differently per caller
(Federation.Pull filters and addresses batches to the calling peer) read it with
`current_caller()`. It lives in a ContextVar, so each call's task sees only its own caller, and a
servicer reached without the gateway (the loopback registry port) finds none and refuses, rather
than answering as if some default peer had asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

from services.core.errors import PermissionDenied

CallerKind = Literal["node", "unit", "operator"]
# What a caller may do at this gateway: its own node's units and operators, pinned peers' node
# certificates, the node's own operator on its admin socket ("admin"); "none" for an
# authenticated caller the method table grants nothing but health.
Role = Literal["unit", "operator", "peer", "admin", "none"]
# What a unit may do, written in its certificate (services.core.tls): look up and read
# (analyst), submit and change what its own unit submitted (submitter), set victim status
# (victim-id), change any record of the node (supervisor).
UnitRole = Literal["analyst", "submitter", "victim-id", "supervisor"]
UNIT_ROLES: tuple[UnitRole, ...] = ("analyst", "submitter", "victim-id", "supervisor")

_current: ContextVar[Caller | None] = ContextVar("hashex_caller", default=None)


@dataclass(frozen=True)
class Caller:
    """A verified caller: parsed from the URI SAN of a certificate that chains to the CA pinned
    for `node_id`, whose SHA-256 fingerprint is `fingerprint`."""

    node_id: str
    kind: CallerKind
    # The unit's or operator's name; None for a node certificate.
    name: str | None
    role: Role
    fingerprint: str
    # A unit's roles (empty for every other kind, and for a unit certificate issued before roles).
    unit_roles: frozenset[UnitRole] = frozenset()

    @property
    def grants(self) -> frozenset[str]:
        """The names the gateway's method table (services.gateway.authz) is written in: a unit's
        roles, or the caller's role for every other caller."""
        if self.role == "unit":
            return frozenset(self.unit_roles)
        return frozenset() if self.role == "none" else frozenset({self.role})

    @property
    def writer(self) -> str:
        """Who a write is remembered as (the media's submitting unit): `unit:NAME`,
        `operator:NAME`, or `node:ID` for a caller without a name."""
        return f"{self.kind}:{self.name}" if self.name is not None else f"node:{self.node_id}"

    @property
    def changes_any_record(self) -> bool:
        """A supervisor unit, or the node's own operator on its admin socket: may change
        records that another unit submitted."""
        return self.role == "admin" or "supervisor" in self.unit_roles

    @property
    def uri(self) -> str:
        """The caller's identity as written in its certificate (rate limits and audit use it)."""
        base = f"spiffe://hashex/node/{self.node_id}"
        return base if self.name is None else f"{base}/{self.kind}/{self.name}"


def current_caller() -> Caller:
    """The caller of the call in progress; PermissionDenied when no gateway verified one."""
    caller = _current.get()
    if caller is None:
        raise PermissionDenied(
            "this method needs a caller verified by the gateway; call it through the node's "
            "gateway with a client certificate"
        )
    return caller


@contextmanager
def calling_as(caller: Caller) -> Iterator[Caller]:
    """Make `caller` the current caller for the block (the gateway wraps each call in this)."""
    token = _current.set(caller)
    try:
        yield caller
    finally:
        _current.reset(token)
