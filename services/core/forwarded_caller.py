"""The verified caller, carried from a gateway to a service that runs apart from it.

In one process (`hashex node up`) the gateway hands the caller to the servicers through a
ContextVar (services.core.caller). When the services run apart (Kubernetes), the call crosses
the node's internal network, where a ContextVar cannot travel and anyone who can reach the
service's port could claim to be any peer in plain metadata. So the gateway adds two headers:

    hashex-caller      compact JSON of the Caller fields (unit_roles a sorted list) and
                       `at_ms` (milliseconds since the epoch when the gateway forwarded the
                       call), keys sorted, ASCII only
    hashex-caller-mac  lowercase hex HMAC-SHA256(secret, DOMAIN + method + NUL + hashex-caller)

with the node's internal secret (keys/internal.key, 32 random bytes shared by the gateway and
the services of one node, never by peers). The MAC binds the method, so a header pair seen on
Federation/Pull cannot be replayed against Admin; `at_ms` must be within FRESHNESS_S of the
receiver's clock. The receiving server's `ForwardedCallerInterceptor` runs the call as that
caller only when both check out; otherwise it refuses it (PERMISSION_DENIED), unless it is
health or reflection, the only calls served without a proven caller.

Encoding and verification are pure (secret, method, headers and the time in; headers or a Caller
out), which is what the property tests exercise.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, get_args

import grpc

from services.core.caller import UNIT_ROLES, Caller, CallerKind, Role, calling_as
from services.core.errors import FailedPrecondition
from services.core.secretfile import read_secret, write_secret
from services.core.server import ServerInterceptor, rewrap_handler

_log = logging.getLogger(__name__)

CALLER_HEADER = "hashex-caller"
MAC_HEADER = "hashex-caller-mac"
# How far the sender's clock may be from the receiver's, either way.
FRESHNESS_S = 60.0
SECRET_BYTES = 32
_DOMAIN = b"hashex.v1.ForwardedCaller\0"
_KINDS: frozenset[str] = frozenset(get_args(CallerKind))
_ROLES: frozenset[str] = frozenset(get_args(Role))
_UNIT_ROLES: frozenset[str] = frozenset(UNIT_ROLES)
_FIELDS = frozenset({"at_ms", "fingerprint", "kind", "name", "node_id", "role", "unit_roles"})

Metadata = tuple[tuple[str, str], ...]


class ForgedCaller(Exception):
    """The headers do not prove a caller; `reason` is safe to log (it holds no header value)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def internal_key_path(data_dir: Path) -> Path:
    return data_dir / "keys" / "internal.key"


def ensure_internal_key(data_dir: Path) -> Path | None:
    """Create keys/internal.key (0600, 32 random bytes) unless it exists; its path if created."""
    path = internal_key_path(data_dir)
    if path.exists():
        return None
    write_secret(path, secrets.token_bytes(SECRET_BYTES))
    return path


def load_internal_key(data_dir: Path) -> bytes:
    """The node's internal secret; FailedPrecondition when missing, too open or malformed."""
    path = internal_key_path(data_dir)
    secret = read_secret(path)
    if len(secret) != SECRET_BYTES:
        raise FailedPrecondition(
            f"key file {path} must hold {SECRET_BYTES} bytes; remove it and run "
            "`hashex node init` to create a new one (then restart every service of the node)"
        )
    return secret


def caller_metadata(secret: bytes, method: str, caller: Caller, *, now_s: float) -> Metadata:
    """The two headers that carry `caller` for a call to `method`, stamped at `now_s`."""
    value = json.dumps(
        {
            "at_ms": round(now_s * 1000),
            "fingerprint": caller.fingerprint,
            "kind": caller.kind,
            "name": caller.name,
            "node_id": caller.node_id,
            "role": caller.role,
            "unit_roles": sorted(caller.unit_roles),
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return ((CALLER_HEADER, value), (MAC_HEADER, _mac(secret, method, value)))


def verify_caller(
    secret: bytes,
    method: str,
    metadata: Iterable[tuple[str, str | bytes]],
    *,
    now_s: float,
) -> Caller:
    """The caller the headers prove for `method` at `now_s`; ForgedCaller when they do not.
    The MAC is checked before anything in the caller header is parsed."""
    value = _single(metadata, CALLER_HEADER)
    mac = _single(metadata, MAC_HEADER)
    if value is None and mac is None:
        raise ForgedCaller("absent")
    if value is None or mac is None:
        raise ForgedCaller("one of the two caller headers is missing")
    if not hmac.compare_digest(
        mac.encode("ascii", "replace"), _mac(secret, method, value).encode()
    ):
        raise ForgedCaller("the caller MAC does not match")
    caller, at_ms = _parse(value)
    if abs(now_s - at_ms / 1000) > FRESHNESS_S:
        raise ForgedCaller(f"the caller header is more than {FRESHNESS_S:g} s off this clock")
    return caller


def _mac(secret: bytes, method: str, value: str) -> str:
    message = _DOMAIN + method.encode("utf-8") + b"\0" + value.encode("ascii", "replace")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _single(metadata: Iterable[tuple[str, str | bytes]], key: str) -> str | None:
    """The one text value of `key`; a repeated or binary value is refused, never chosen from."""
    values = [v for k, v in metadata if k == key]
    if not values:
        return None
    if len(values) > 1:
        raise ForgedCaller(f"{key} is repeated")
    value = values[0]
    if not isinstance(value, str):
        raise ForgedCaller(f"{key} is not text")
    return value


def _parse(value: str) -> tuple[Caller, int]:
    """Strict: exactly the expected keys with the expected types and vocabulary."""
    try:
        fields = json.loads(value)
    except ValueError:
        raise ForgedCaller("the caller header is not JSON") from None
    if not isinstance(fields, dict) or set(fields) != _FIELDS:
        raise ForgedCaller("the caller header has the wrong fields")
    at_ms, kind, role, name = fields["at_ms"], fields["kind"], fields["role"], fields["name"]
    if not isinstance(at_ms, int) or isinstance(at_ms, bool):
        raise ForgedCaller("at_ms is not an integer")
    if not all(isinstance(fields[k], str) for k in ("fingerprint", "kind", "node_id", "role")):
        raise ForgedCaller("a caller field is not text")
    if kind not in _KINDS or role not in _ROLES:
        raise ForgedCaller("unknown caller kind or role")
    if (name is None) != (kind == "node") or not (name is None or isinstance(name, str)):
        raise ForgedCaller("a node caller has no name; a unit or operator has one")
    unit_roles = fields["unit_roles"]
    if not isinstance(unit_roles, list) or not all(r in _UNIT_ROLES for r in unit_roles):
        raise ForgedCaller("unit_roles is not a list of known roles")
    caller = Caller(
        node_id=fields["node_id"],
        kind=kind,
        name=name,
        role=role,
        fingerprint=fields["fingerprint"],
        unit_roles=frozenset(unit_roles),
    )
    return caller, at_ms


Context = grpc.aio.ServicerContext[Any, Any]


# What a service run apart answers without a forwarded caller: health (for probes) and
# reflection (the public contract anyway). Everything else needs the gateway's signed caller.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class ForwardedCallerInterceptor(ServerInterceptor):
    """For a service that runs apart from its gateway: runs each call as the caller its headers
    prove. A call without a proven caller is refused (PERMISSION_DENIED), unless it is health or
    reflection: the internal port is plaintext, so the MAC'd caller is what makes it safe to
    listen on the node's internal network."""

    def __init__(self, secret: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < SECRET_BYTES:
            raise ValueError(f"the internal secret must be at least {SECRET_BYTES} bytes")
        self._secret = secret
        self._clock = clock

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        try:
            caller = verify_caller(
                self._secret,
                method,
                tuple(handler_call_details.invocation_metadata or ()),
                now_s=self._clock(),
            )
        except ForgedCaller as refused:
            if method.startswith(OPEN_SERVICES):
                return handler
            if refused.reason != "absent":
                _log.warning("call to %s: caller not accepted (%s)", method, refused.reason)
            return refusing(handler, _refusal(refused.reason))
        return as_caller(handler, caller)


def _refusal(reason: str) -> str:
    if reason == "absent":
        return (
            "this is a service's internal port: call the node through its gateway (mutual TLS) "
            "or, on the node's machine, its admin socket"
        )
    return "the caller headers were not accepted"


def refusing(
    handler: grpc.RpcMethodHandler[Any, Any], message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` answering PERMISSION_DENIED with `message`, whatever its call shape."""

    def wrap(behaviour: Any, streaming: bool) -> Any:
        async def refuse(request: Any, context: Context) -> Any:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)

        async def refuse_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
            yield  # pragma: no cover - abort raises

        return refuse_stream if streaming else refuse

    return rewrap_handler(handler, wrap)


def as_caller(
    handler: grpc.RpcMethodHandler[Any, Any], caller: Caller
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with `caller` current while its behaviour runs, for every call shape."""

    def wrap(behaviour: Any, streaming: bool) -> Any:
        return _streaming(behaviour, caller) if streaming else _unary(behaviour, caller)

    return rewrap_handler(handler, wrap)


def _unary(behaviour: Any, caller: Caller) -> Callable[[Any, Context], Awaitable[Any]]:
    async def handle(request: Any, context: Context) -> Any:
        with calling_as(caller):
            return await behaviour(request, context)

    return handle


def _streaming(behaviour: Any, caller: Caller) -> Callable[[Any, Context], AsyncIterator[Any]]:
    """The caller is set around each step of the servicer's generator (and its closing), not
    across the yields, so the ContextVar is always reset in the context that set it."""

    async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
        with calling_as(caller):
            result = behaviour(request, context)
            if inspect.isawaitable(result):  # a writer-style servicer (context.write)
                await result
                return
        try:
            while True:
                with calling_as(caller):
                    try:
                        item = await anext(result)
                    except StopAsyncIteration:
                        break
                yield item
        finally:
            if hasattr(result, "aclose"):
                with calling_as(caller):
                    await result.aclose()

    return handle
