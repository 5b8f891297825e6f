"""Which role may call which method at the gateway: one table, deny by default.

Peers reach federation only; the node's own units the registry and federated lookups; its
operators the admin methods. Health and reflection are open to any authenticated caller (they
reveal the service names, which the public contract names anyway). A method missing from the
table is refused, so a service added to the node later stays closed until it is listed here.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.core.caller import Role

ANY_AUTHENTICATED: frozenset[Role] = frozenset({"unit", "operator", "peer", "none"})

# Keys ending in "/" cover every method of that service; others are one full method name.
METHOD_ROLES: Mapping[str, frozenset[Role]] = {
    "/hashex.v1.Registry/": frozenset({"unit"}),
    "/hashex.v1.Units/FederatedLookup": frozenset({"unit"}),
    "/hashex.v1.Federation/Pull": frozenset({"peer"}),
    "/hashex.v1.Federation/PeerLookup": frozenset({"peer"}),
    "/hashex.v1.Federation/GetAuditCheckpoint": frozenset({"peer"}),
    "/hashex.v1.Admin/": frozenset({"operator"}),
    "/grpc.health.v1.Health/": ANY_AUTHENTICATED,
    "/grpc.reflection.v1alpha.ServerReflection/": ANY_AUTHENTICATED,
    "/grpc.reflection.v1.ServerReflection/": ANY_AUTHENTICATED,
}


def roles_for(method: str) -> frozenset[Role]:
    """The roles that may call `method` (a full name such as `/hashex.v1.Federation/Pull`)."""
    exact = METHOD_ROLES.get(method)
    if exact is not None:
        return exact
    service, _, _ = method.rpartition("/")
    return METHOD_ROLES.get(service + "/", frozenset())


def is_allowed(method: str, role: Role) -> bool:
    return role in roles_for(method)


def refusal_message(method: str, role: Role) -> str:
    """Why the call was refused, naming what would be allowed (the table is no secret)."""
    allowed = sorted(roles_for(method))
    if not allowed:
        return f"{method} is not offered at this gateway"
    who = "a caller without a role here" if role == "none" else f"a {role} certificate"
    return f"{method} may not be called with {who}; it needs: {', '.join(allowed)}"
