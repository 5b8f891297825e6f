"""The gateway's checks, applied by wrapping each method handler (a server interceptor sees only
the method name and metadata; the handler sees the verified certificate and the request bytes).

Order, for every call shape: identity (verified leaf, pinned CA, validity, TLS 1.3) and the
deny-list -> authorisation by role -> the caller's rate limit (one token for the call) and its
cap on calls in flight -> the size of each request message, checked on the raw bytes before they
are parsed -> the work the message asks for, charged to the caller's rate limit
(services.gateway.work) -> the deadline -> the servicer, run with the caller set
(services.core.caller) -> one audit record. Every refusal ends the call
through `context.abort`, so the record that follows names the status the client saw.

Requests reach the wrapper unparsed (the wrapped handler has no deserializer): that is what lets
oversized messages be refused before parsing, and the digest in the audit record be of the exact
bytes the client sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol, cast

import grpc
from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from the stubs

from services.core.audit.chain import AuditEntry, RequestDigest, clip
from services.core.audit.recorder import AuditRecorder
from services.core.caller import Caller, calling_as
from services.core.errors import InvalidArgument
from services.core.request_decoding import decode_request, request_class_of
from services.core.rpc_status import abort_with
from services.core.server import ServerInterceptor, call_status_name, rewrap_handler
from services.gateway import authz
from services.gateway.identity import Presented, Unauthenticated
from services.gateway.limits import InFlight, RateLimiter
from services.gateway.work import units_of

_log = logging.getLogger(__name__)

# Methods that stream for long by design get the longer deadline.
LONG_STREAM_METHODS = frozenset({"/hashex.v1.Federation/Pull"})
# How often the caller of a long stream is verified again while it waits (revocation, expiry).
TRUST_RECHECK_S = 5.0

Context = grpc.aio.ServicerContext[Any, Any]
Deserializer = Callable[[bytes], Any] | None


class Verifier(Protocol):
    """Turns a call's auth context into its Caller or raises Unauthenticated: the gateway's
    CallerVerifier (mutual TLS), or the admin socket's fixed local operator."""

    def verify(self, auth_context: Mapping[str, Iterable[bytes]]) -> Caller: ...


@dataclass(frozen=True)
class GatewayLimits:
    max_request_bytes: int
    call_deadline_s: float
    pull_deadline_s: float
    rate_limit_hashes_per_s: float
    rate_limit_hashes_burst: int
    max_calls_in_flight_per_caller: int


@dataclass
class _Call:
    """What the audit record of one call needs, filled in as the call proceeds."""

    method: str
    known: bool
    at: datetime
    started: float
    caller: Caller | None = None
    presented: Presented = field(default_factory=Presented)
    requests: RequestDigest = field(default_factory=RequestDigest)
    responses: int = 0
    recorded: bool = False
    # Counted among its caller's calls in flight (until the call finishes).
    in_flight: bool = False


class GatewayInterceptor(ServerInterceptor):
    """Wraps every handler (and answers unknown methods) with the gateway's checks and audit."""

    def __init__(
        self,
        *,
        verifier: Verifier,
        limiter: RateLimiter,
        in_flight: InFlight,
        recorder: AuditRecorder,
        limits: GatewayLimits,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._verifier = verifier
        self._limiter = limiter
        self._in_flight = in_flight
        self._recorder = recorder
        self._limits = limits
        self._wall_clock = wall_clock

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None:  # still authenticated, authorised and audited
            return grpc.stream_stream_rpc_method_handler(
                self._streaming_response(_never_called, method, self._parse_stream, None, False)
            )
        return self._wrap(handler, method)

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        # The checks see the raw request bytes (size, digest) and parse them afterwards.
        parse_in = handler.request_deserializer

        def wrap(behaviour: Any, streaming_response: bool) -> Any:
            parse = self._parse_stream if handler.request_streaming else self._parse_one
            if streaming_response:
                return self._streaming_response(behaviour, method, parse, parse_in)
            return self._unary_response(behaviour, method, parse, parse_in)

        return rewrap_handler(handler, wrap, keep_request_deserializer=False)

    def _unary_response(
        self, behaviour: Any, method: str, parse: Any, deserializer: Deserializer
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        async def handle(raw: Any, context: Context) -> Any:
            call = self._start(method, known=True, request=raw)
            try:
                caller = await self._admit(call, context)
                request = await parse(call, raw, context, deserializer)
                served = self._served(call, context, deserializer)
                response = await self._run(call, caller, context, behaviour(request, served))
            except BaseException as error:
                await self._finish(call, context, error)
                raise
            call.responses = 1 if call_status_name(context, None) == "OK" else 0
            if not await self._finish(call, context, None):
                await _abort(
                    context,
                    grpc.StatusCode.UNAVAILABLE,
                    "the node could not record this call in its audit log; retry later",
                )
            return response

        return handle

    def _streaming_response(
        self,
        behaviour: Any,
        method: str,
        parse: Any,
        deserializer: Deserializer,
        known: bool = True,
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        async def handle(raw: Any, context: Context) -> AsyncIterator[Any]:
            call = self._start(method, known=known, request=raw)
            error: BaseException | None = None
            responses: Any = None
            try:
                caller = await self._admit(call, context)
                request = await parse(call, raw, context, deserializer)
                served = self._served(call, context, deserializer)
                result = behaviour(request, served)
                if inspect.isawaitable(result):  # a writer-style servicer (context.write)
                    await self._run(call, caller, context, result)
                    return
                responses = result
                async for item in self._responses_of(call, caller, context, responses):
                    call.responses += 1
                    yield item
            except BaseException as caught:
                error = caught
                raise
            finally:
                try:  # close the servicer's generator here, as its caller, not later in GC
                    if responses is not None and hasattr(responses, "aclose") and call.caller:
                        with calling_as(call.caller):
                            await responses.aclose()
                finally:
                    await self._finish(call, context, error)

        return handle

    async def _run(
        self, call: _Call, caller: Caller, context: Context, work: Awaitable[Any]
    ) -> Any:
        """Await the servicer as `caller`, within the method's deadline."""
        scope = asyncio.timeout(self._deadline_s(call.method))
        with calling_as(caller):
            try:
                async with scope:
                    return await work
            except TimeoutError:
                if scope.expired():
                    await self._deadline_exceeded(call, context)
                raise

    def _served(self, call: _Call, context: Context, deserializer: Deserializer) -> Context:
        return cast(Context, _ServedContext(self, call, context, deserializer))

    async def _admit(self, call: _Call, context: Context) -> Caller:
        try:
            caller = self._verifier.verify(context.auth_context())
        except Unauthenticated as refused:
            call.presented = refused.presented
            await self._refuse(call, context, grpc.StatusCode.UNAUTHENTICATED, str(refused))
        call.caller = caller
        if not authz.is_allowed(call.method, caller):
            message = authz.refusal_message(call.method, caller)
            await self._refuse(call, context, grpc.StatusCode.PERMISSION_DENIED, message)
        if not call.known:  # in the table, but its service does not run in this process
            await self._refuse(
                call, context, grpc.StatusCode.UNIMPLEMENTED, f"{call.method} is not served here"
            )
        if not self._limiter.try_acquire(caller.uri):
            await self._refuse(
                call, context, grpc.StatusCode.RESOURCE_EXHAUSTED, self._rate_message(1)
            )
        if not self._in_flight.try_enter(caller.uri):
            await self._refuse(
                call,
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"at most {self._in_flight.limit} calls of one caller run at a time; wait for "
                "one to finish",
            )
        call.in_flight = True
        return caller

    async def _responses_of(
        self, call: _Call, caller: Caller, context: Context, responses: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        """The servicer's responses, within the method's deadline. A pull held open for
        minutes is checked again every TRUST_RECHECK_S and before each message, so that a
        certificate revoked meanwhile ends it within seconds, as it would refuse a new call."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._deadline_s(call.method)
        long = call.method in LONG_STREAM_METHODS
        pending: asyncio.Future[Any] | None = None
        try:
            while True:
                if pending is None:
                    with calling_as(caller):  # the task inherits the caller
                        pending = asyncio.ensure_future(anext(responses))
                remaining = deadline - loop.time()
                if remaining <= 0:
                    await self._deadline_exceeded(call, context)
                wait = min(remaining, TRUST_RECHECK_S) if long else remaining
                done, _ = await asyncio.wait({pending}, timeout=wait)
                if long:
                    await self._still_trusted(call, context)
                if not done:
                    continue
                finished, pending = pending, None
                try:
                    item = finished.result()
                except StopAsyncIteration:
                    return
                yield item
        finally:
            if pending is not None:  # so that the servicer's generator can be closed after
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending

    async def _still_trusted(self, call: _Call, context: Context) -> None:
        """A pull held open for minutes is checked again before each message it sends: a
        certificate revoked (or expired) meanwhile ends it, as it would refuse a new call."""
        try:
            self._verifier.verify(context.auth_context())
        except Unauthenticated as refused:
            await self._refuse(call, context, grpc.StatusCode.UNAUTHENTICATED, str(refused))

    def _rate_message(self, units: int) -> str:
        limits = self._limits
        rate = (
            f"at most {limits.rate_limit_hashes_per_s:g} hashes per second (bursts of "
            f"{limits.rate_limit_hashes_burst}) per caller, each call counting one more"
        )
        if units > limits.rate_limit_hashes_burst:
            return (
                f"a message asking for {units} hashes is more than the gateway allows ({rate}); "
                "send smaller batches"
            )
        return f"rate limit exceeded: {rate}; slow down and retry"

    async def _parse_one(
        self, call: _Call, raw: bytes, context: Context, deserializer: Deserializer
    ) -> Any:
        return await self._checked(call, raw, context, deserializer, streamed=False)

    async def _parse_stream(
        self, call: _Call, raw: AsyncIterator[bytes], context: Context, deserializer: Deserializer
    ) -> AsyncIterator[Any]:
        async def requests() -> AsyncIterator[Any]:
            async for message in raw:
                call.requests.add(message)
                yield await self._checked(call, message, context, deserializer)

        return requests()

    async def _checked(
        self,
        call: _Call,
        raw: bytes,
        context: Context,
        deserializer: Deserializer,
        *,
        streamed: bool = True,
    ) -> Any:
        if len(raw) > self._limits.max_request_bytes:
            await self._refuse(
                call,
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request message {call.requests.count} is {len(raw)} bytes; the gateway "
                f"accepts at most {self._limits.max_request_bytes} per message: send smaller "
                "batches",
            )
        message: Any = raw  # forwarded as it came: the service behind decodes it
        request_class = request_class_of(deserializer)
        if request_class is not None:
            index = call.requests.count - 1 if streamed else None
            try:
                message = decode_request(request_class, raw, stream_index=index)
            except InvalidArgument as error:
                await self._record(call, grpc.StatusCode.INVALID_ARGUMENT.name)
                call.recorded = True
                await abort_with(context, error)  # its BadRequest detail names the field
        elif deserializer is not None:  # not a generated message type: parse as it says
            try:
                message = deserializer(raw)
            except Exception:
                await self._refuse(
                    call,
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request message {call.requests.count} is not valid for {call.method}",
                )
        units = units_of(call.method, message)
        if units and call.caller and not self._limiter.try_acquire(call.caller.uri, units):
            await self._refuse(
                call, context, grpc.StatusCode.RESOURCE_EXHAUSTED, self._rate_message(units)
            )
        return message

    def _deadline_s(self, method: str) -> float:
        if method in LONG_STREAM_METHODS:
            return self._limits.pull_deadline_s
        return self._limits.call_deadline_s

    async def _deadline_exceeded(self, call: _Call, context: Context) -> NoReturn:
        await self._refuse(
            call,
            context,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"the call ran longer than the gateway allows ({self._deadline_s(call.method):g} s); "
            "ask for less per call",
        )

    def _start(self, method: str, *, known: bool, request: Any) -> _Call:
        """A unary request has arrived whole before the handler runs: it is counted and
        digested even when the call is refused (streamed requests as they are read)."""
        call = _Call(method, known, self._wall_clock(), time.perf_counter())
        if isinstance(request, bytes):
            call.requests.add(request)
        return call

    async def _refuse(
        self, call: _Call, context: Context, code: grpc.StatusCode, message: str
    ) -> NoReturn:
        """End the call with `code`, its audit record stored first: grpc.aio sends the status
        to the client the moment `abort` is called."""
        await self._record(call, code.name)
        call.recorded = True
        await _abort(context, code, message)

    async def _finish(self, call: _Call, context: Context, error: BaseException | None) -> bool:
        """Leave the caller's calls in flight; write the call's audit record unless a refusal
        already did."""
        if call.in_flight and call.caller is not None:
            self._in_flight.leave(call.caller.uri)
            call.in_flight = False
        if call.recorded:
            return True
        return await self._record(call, call_status_name(context, error))

    async def _record(self, call: _Call, status: str) -> bool:
        """Store the call's audit record; False (and logged) when it could not be stored."""
        caller = call.caller
        entry = AuditEntry(
            at=call.at,
            duration_ms=max(0, round((time.perf_counter() - call.started) * 1000)),
            caller=clip(caller.uri if caller else call.presented.uri),
            fingerprint=caller.fingerprint if caller else call.presented.fingerprint,
            role=caller.role if caller else "none",
            method=clip(call.method),
            request_messages=call.requests.count,
            response_messages=call.responses,
            request_digest=call.requests.digest(),
            status=status,
        )
        try:
            await self._recorder.record(entry)
        except Exception:
            _log.exception(
                "could not store the audit record of a %s call to %s", status, entry.method
            )
            return False
        return True


class _ServedContext:
    """The context as the servicer sees it: the real one, except that messages sent with
    `write` are counted and messages taken with `read` get the same size check, parsing and
    digest as the request iterator (the reader/writer style grpc.aio also allows)."""

    def __init__(
        self,
        gate: GatewayInterceptor,
        call: _Call,
        context: Context,
        deserializer: Deserializer,
    ) -> None:
        self._gate = gate
        self._call = call
        self._context = context
        self._deserializer = deserializer

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._call.responses += 1

    async def read(self) -> Any:
        raw = await self._context.read()
        if raw is EOF:
            return raw
        self._call.requests.add(raw)
        return await self._gate._checked(self._call, raw, self._context, self._deserializer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")


async def _never_called(request: Any, context: Context) -> AsyncIterator[Any]:
    """The behaviour behind unknown methods; admission aborts first with UNIMPLEMENTED."""
    raise AssertionError("unknown methods are refused during admission")
    yield  # an async generator, like the behaviours it stands in for
