"""Who may call which method: one table, deny by default, for the gateway and the admin socket.

The table is written in grants (`Caller.grants`): a unit's roles from its certificate
(`analyst`, `submitter`, `victim-id`, `supervisor`), `operator` for an operator certificate,
`peer` for a pinned peer's node certificate, `admin` for the node's own operator on its admin
socket (every method the node serves). Health and reflection are open to any authenticated
caller (they reveal the service names, which the public contract names anyway). A method missing
from the table is refused, so a service added to the node later stays closed until it is listed.

What a role may do to a record it reaches (a submitter changes only what its own unit submitted)
is the registry's check, not this table's: the table sees methods, not records.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.core.caller import UNIT_ROLES, Caller

ANY_AUTHENTICATED = frozenset({"*"})

_READ = frozenset({"analyst", "supervisor", "admin"})
_READ_RECORDS = frozenset({"analyst", "submitter", "victim-id", "supervisor", "admin"})
_CHANGE_MEDIA = frozenset({"submitter", "supervisor", "admin"})
_READ_FLAGS = frozenset({"analyst", "victim-id", "supervisor", "admin"})

# Keys ending in "/" cover every method of that service; others are one full method name.
METHOD_GRANTS: Mapping[str, frozenset[str]] = {
    "/hashex.v1.Registry/SubmitMedia": _CHANGE_MEDIA,
    "/hashex.v1.Registry/RetractMedia": _CHANGE_MEDIA,
    "/hashex.v1.Registry/UpdateMedia": _CHANGE_MEDIA,
    "/hashex.v1.Registry/UpsertSeries": _CHANGE_MEDIA,
    "/hashex.v1.Registry/UpdateVictim": frozenset({"victim-id", "supervisor", "admin"}),
    "/hashex.v1.Registry/Lookup": _READ,
    "/hashex.v1.Registry/LookupStream": _READ,
    "/hashex.v1.Registry/GetSeries": _READ_RECORDS,
    "/hashex.v1.Registry/GetStats": _READ_RECORDS,
    "/hashex.v1.Registry/Dedup": frozenset({"analyst", "victim-id", "supervisor", "admin"}),
    # The node's whole own set at once: a supervisor's decision, or the operator's.
    "/hashex.v1.Registry/ExportMedia": frozenset({"supervisor", "admin"}),
    "/hashex.v1.Units/FederatedLookup": _READ,
    "/hashex.v1.Flags/ListFlags": _READ_FLAGS,
    "/hashex.v1.Flags/WatchFlags": _READ_FLAGS,
    "/hashex.v1.Flags/SetFlagState": frozenset({"victim-id", "supervisor", "admin"}),
    "/hashex.v1.Federation/Pull": frozenset({"peer"}),
    "/hashex.v1.Federation/PeerLookup": frozenset({"peer"}),
    "/hashex.v1.Federation/GetAuditCheckpoint": frozenset({"peer"}),
    "/hashex.v1.Admin/": frozenset({"operator", "admin"}),
    "/grpc.health.v1.Health/": ANY_AUTHENTICATED,
    "/grpc.reflection.v1alpha.ServerReflection/": ANY_AUTHENTICATED,
    "/grpc.reflection.v1.ServerReflection/": ANY_AUTHENTICATED,
}


# How refusals list grants: a unit's roles from least to most power, then the other callers.
_ORDER = (*UNIT_ROLES, "operator", "peer", "admin", "*")


def grants_for(method: str) -> frozenset[str]:
    """The grants that may call `method` (a full name such as `/hashex.v1.Federation/Pull`)."""
    exact = METHOD_GRANTS.get(method)
    if exact is not None:
        return exact
    service, _, _ = method.rpartition("/")
    return METHOD_GRANTS.get(service + "/", frozenset())


def is_allowed(method: str, caller: Caller) -> bool:
    allowed = grants_for(method)
    return allowed == ANY_AUTHENTICATED or bool(allowed & caller.grants)


def refusal_message(method: str, caller: Caller) -> str:
    """Why the call was refused, naming the roles that would be allowed (the table is no
    secret); a unit certificate without roles is told how to get one."""
    allowed = sorted(grants_for(method) - {"admin"}, key=_ORDER.index)
    if not allowed:
        return f"{method} is not offered at this gateway"
    needed = f"it needs the role {' or '.join(allowed)}"
    if caller.role == "unit" and not caller.unit_roles:
        return (
            f"{method} refused: this unit certificate carries no role (it was issued before "
            f"units had roles); {needed}: ask the operator for a new one (`hashex unit issue "
            f"{caller.name} --role ...`)"
        )
    if caller.role == "unit":
        held = ", ".join(sorted(caller.unit_roles))
        return f"{method} refused for unit {caller.name} (role {held}); {needed}"
    who = (
        "a caller without a role here" if caller.role == "none" else f"a {caller.role} certificate"
    )
    return f"{method} may not be called with {who}; {needed}"
