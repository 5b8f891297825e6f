"""`build_server` decodes requests itself: an undecodable message on any port answers
INVALID_ARGUMENT naming the field, with a BadRequest detail, for every call shape; handlers that
take raw bytes (the gateway's, forwarding ones) are left alone. Real gRPC on loopback, raw bytes
sent with no serializer."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from opentelemetry.sdk.trace import TracerProvider

from hashex.v1 import common_pb2, registry_pb2
from services.core.errors import FailedPrecondition
from services.core.server import (
    RunningServer,
    ServerInterceptor,
    ServiceBinding,
    build_server,
    rewrap_handler,
)
from tests.registry.node_harness import Node, md5, running_node, submission
from tests.waiting import wait_for

pytestmark = pytest.mark.asyncio

CALL_TIMEOUT_S = 10.0
Context = grpc.aio.ServicerContext[Any, Any]


@pytest.fixture
async def node(tmp_path: Path, empty_database: str) -> AsyncIterator[Node]:
    async with running_node(tmp_path / "node", empty_database) as running:
        yield running


def with_bad_utf8(message: Any, placeholder: str = "XX-bad") -> bytes:
    data: bytes = message.SerializeToString()
    assert data.count(placeholder.encode()) == 1
    return data.replace(placeholder.encode(), b"\xc3" + placeholder.encode()[1:])


def assert_refused(error: grpc.aio.AioRpcError, field: str, description: str) -> None:
    """INVALID_ARGUMENT, the message naming the field, one BadRequest violation saying so."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"{field}: {description}"
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        (field, description)
    ]


async def refusal(awaitable: Awaitable[Any]) -> grpc.aio.AioRpcError:
    try:
        await awaitable
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the call was not refused")


async def test_an_undecodable_unary_request_names_the_field(node: Node) -> None:
    lookup = registry_pb2.LookupRequest(signals=[md5(bytes(16)), common_pb2.Signal(value="XX-bad")])
    call = node.channel.unary_unary("/hashex.v1.Registry/Lookup", None, None)
    error = await refusal(call(with_bad_utf8(lookup), timeout=CALL_TIMEOUT_S))
    assert_refused(error, "signals[1].value", "not valid UTF-8")
    valid = registry_pb2.LookupRequest(signals=[md5(bytes(16)), md5(b"\x01" * 16)])
    answer = await call(valid.SerializeToString(), timeout=CALL_TIMEOUT_S)
    reply = registry_pb2.LookupResponse.FromString(answer)
    assert len(reply.results) == 2


async def test_an_undecodable_message_of_a_client_stream_ends_it_naming_the_message(
    node: Node,
) -> None:
    first = registry_pb2.SubmitMediaRequest(media=[submission("a1", md5(b"\x01" * 16))])
    second = registry_pb2.SubmitMediaRequest(media=[submission("b1", md5(b"\x02" * 16))])
    second.media[0].case_data.file_path = "XX-bad"
    call = node.channel.stream_unary("/hashex.v1.Registry/SubmitMedia", None, None)
    error = await refusal(
        call(iter([first.SerializeToString(), with_bad_utf8(second)]), timeout=CALL_TIMEOUT_S)
    )
    assert_refused(error, "message[1].media[0].case_data.file_path", "not valid UTF-8")
    stats = await node.stub.GetStats(registry_pb2.GetStatsRequest())
    assert stats.media_count == 1  # the batch before it was stored, as the contract says


async def test_an_undecodable_message_of_a_bidirectional_stream_ends_it_after_the_answers_so_far(
    node: Node,
) -> None:
    good = registry_pb2.LookupStreamRequest(
        batch_id="b0", lookup=registry_pb2.LookupRequest(signals=[md5(bytes(16))])
    )
    truncated = b"\x0a\x02b1\x12\x05\x0a\x28\x08\x01\x12"  # lookup.signals[0] runs past the end
    call = node.channel.stream_stream("/hashex.v1.Registry/LookupStream", None, None)
    answers: list[bytes] = []
    responses = call(iter([good.SerializeToString(), truncated]), timeout=CALL_TIMEOUT_S)

    async def read_all() -> None:
        async for answer in responses:
            answers.append(answer)

    error = await refusal(read_all())
    assert [registry_pb2.LookupStreamResponse.FromString(a).batch_id for a in answers] == ["b0"]
    assert_refused(
        error, "message[1].lookup.signals[0]", "truncated message: declares 40 bytes, 3 remain"
    )


async def test_an_undecodable_request_of_a_server_stream_is_refused_before_any_answer(
    node: Node,
) -> None:
    request = health_pb2.HealthCheckRequest(service="XX-bad")
    watch = node.channel.unary_stream("/grpc.health.v1.Health/Watch", None, None)

    async def first_answer() -> None:
        async for _ in watch(with_bad_utf8(request), timeout=CALL_TIMEOUT_S):
            raise AssertionError("answered an undecodable request")

    assert_refused(await refusal(first_answer()), "service", "not valid UTF-8")


# A small service of every call shape, beside which the tests put interceptors like the
# gateway's (raw bytes) or the forwarded-caller one (keeps the deserializer).
PROBE = "hashex.test.Probe"
LookupRequest = registry_pb2.LookupRequest


async def _count_unary(request: LookupRequest, context: Context) -> bytes:
    return str(len(request.signals)).encode()


async def _count_by_reading(requests: Any, context: Context) -> bytes:
    """Reader style: takes its messages with context.read()."""
    signals = 0
    while (request := await context.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
        signals += len(request.signals)
    return str(signals).encode()


async def _echo_by_writing(request: LookupRequest, context: Context) -> None:
    """Writer style: answers with context.write()."""
    await context.write(str(len(request.signals)).encode())


async def _echo_each(
    requests: AsyncIterator[LookupRequest], context: Context
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield str(len(request.signals)).encode()


def _probe_binding() -> ServiceBinding:
    shapes: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
        "Count": (grpc.unary_unary_rpc_method_handler, _count_unary),
        "CountByReading": (grpc.stream_unary_rpc_method_handler, _count_by_reading),
        "EchoByWriting": (grpc.unary_stream_rpc_method_handler, _echo_by_writing),
        "EchoEach": (grpc.stream_stream_rpc_method_handler, _echo_each),
    }
    handlers = {
        name: factory(behaviour, request_deserializer=LookupRequest.FromString)
        for name, (factory, behaviour) in shapes.items()
    }
    generic = grpc.method_handlers_generic_handler(PROBE, handlers)
    return ServiceBinding(PROBE, lambda server: server.add_generic_rpc_handlers((generic,)))


class _TakesRawBytes(ServerInterceptor):
    """Like the gateway's: strips the deserializer, records the exact bytes of the first
    request message and refuses the call."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)

        async def refuse(raw: Any, context: Context) -> None:
            if not isinstance(raw, bytes):  # a request stream
                raw = await anext(aiter(raw))
            self.received.append(raw)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{len(raw)} bytes")

        def wrap(behaviour: Any, streaming_response: bool) -> Any:
            if not streaming_response:
                return refuse

            async def refuse_streaming(raw: Any, context: Context) -> AsyncIterator[bytes]:
                await refuse(raw, context)
                yield b""

            return refuse_streaming

        return rewrap_handler(handler, wrap, keep_request_deserializer=False)


class _PassesThrough(ServerInterceptor):
    """Like the forwarded-caller one: rewraps each handler, keeping its deserializer."""

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        return rewrap_handler(await continuation(details), lambda behaviour, _: behaviour)


async def _probe_server(*interceptors: ServerInterceptor) -> RunningServer:
    return await build_server(
        listen="127.0.0.1:0",
        services=[_probe_binding()],
        tracer_provider=TracerProvider(),
        interceptors=interceptors,
    )


def _lookup(*values: str) -> bytes:
    signals = [common_pb2.Signal(algorithm=1, value=v) for v in values]
    return LookupRequest(signals=signals).SerializeToString()


BAD = LookupRequest(signals=[common_pb2.Signal(value="XX-bad")])


async def _call(channel: grpc.aio.Channel, method: str, requests: Iterable[bytes]) -> list[bytes]:
    path, items = f"/{PROBE}/{method}", list(requests)
    if method == "Count":
        return [await channel.unary_unary(path, None, None)(items[0], timeout=CALL_TIMEOUT_S)]
    if method == "CountByReading":
        call = channel.stream_unary(path, None, None)
        return [await call(iter(items), timeout=CALL_TIMEOUT_S)]
    if method == "EchoByWriting":
        call_stream = channel.unary_stream(path, None, None)(items[0], timeout=CALL_TIMEOUT_S)
    else:
        call_stream = channel.stream_stream(path, None, None)(iter(items), timeout=CALL_TIMEOUT_S)
    return [answer async for answer in call_stream]


UNARY_REQUEST = ("Count", "EchoByWriting")


@pytest.mark.parametrize(
    ("method", "field"),
    [
        ("Count", "signals[0].value"),
        ("CountByReading", "message[2].signals[0].value"),
        ("EchoByWriting", "signals[0].value"),
        ("EchoEach", "message[2].signals[0].value"),
    ],
)
@pytest.mark.parametrize("inner", [(), (_PassesThrough(),)], ids=["alone", "inner-interceptor"])
async def test_every_call_shape_decodes_its_requests_and_names_an_undecodable_one(
    method: str, field: str, inner: tuple[ServerInterceptor, ...]
) -> None:
    valid = [_lookup("a"), _lookup("a", "b"), _lookup()]
    bad = [with_bad_utf8(BAD)] if method in UNARY_REQUEST else [*valid[:2], with_bad_utf8(BAD)]
    running = await _probe_server(*inner)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            answers = await _call(channel, method, valid)
            error = await refusal(_call(channel, method, bad))
    finally:
        await running.stop(0)
    expected = {"Count": [b"1"], "EchoByWriting": [b"1"], "CountByReading": [b"3"]}
    assert answers == expected.get(method, [b"1", b"2", b"0"])
    assert_refused(error, field, "not valid UTF-8")


@pytest.mark.parametrize("method", ["Count", "CountByReading", "EchoByWriting", "EchoEach"])
async def test_handlers_that_take_raw_bytes_get_them_untouched(method: str) -> None:
    """The gateway's handlers parse the exact bytes themselves, after their size check: the
    decoding step must neither parse nor refuse them first."""
    raw_bytes = _TakesRawBytes()
    bad = with_bad_utf8(BAD)
    running = await _probe_server(raw_bytes)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            error = await refusal(_call(channel, method, [bad]))
    finally:
        await running.stop(0)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        f"{len(bad)} bytes",
    )
    assert raw_bytes.received == [bad]


async def test_a_port_in_use_is_one_clear_error() -> None:
    """A second node on the same port, or a clash with another program: one line naming the
    address and what to change, not a gRPC RuntimeError traceback."""
    first = await _probe_server()
    try:
        taken = f"127.0.0.1:{first.port}"
        with pytest.raises(FailedPrecondition, match=re.escape(f"cannot listen on {taken}")):
            await build_server(
                listen=taken, services=[_probe_binding()], tracer_provider=TracerProvider()
            )
    finally:
        await first.stop(0)


# Health on every port, and an access log that says what the client saw.
FAILING = "hashex.test.Failing"


async def _fail_mid_stream(request: LookupRequest, context: Context) -> AsyncIterator[bytes]:
    yield b"first"
    raise RuntimeError("broke after one answer")


async def _abort_mid_stream(request: LookupRequest, context: Context) -> AsyncIterator[bytes]:
    yield b"first"
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too much")


def _failing_binding() -> ServiceBinding:
    handlers = {
        name: grpc.unary_stream_rpc_method_handler(
            behaviour, request_deserializer=LookupRequest.FromString
        )
        for name, behaviour in (("Fail", _fail_mid_stream), ("Abort", _abort_mid_stream))
    }
    generic = grpc.method_handlers_generic_handler(FAILING, handlers)
    return ServiceBinding(FAILING, lambda server: server.add_generic_rpc_handlers((generic,)))


class _ParsesItself(ServerInterceptor):
    """Strips the deserializer and parses in its own wrapper, handing a writer-style servicer
    on as it is (a coroutine, not an async generator) to the access log outside it."""

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        deserializer = handler.request_deserializer

        def wrap(behaviour: Any, streaming_response: bool) -> Any:
            def parsed(raw: bytes, context: Context) -> Any:
                return behaviour(deserializer(raw), context)  # a coroutine or an async generator

            return parsed

        return rewrap_handler(handler, wrap, keep_request_deserializer=False)


def _logged(caplog: pytest.LogCaptureFixture, method: str) -> list[str]:
    return [
        r.getMessage().split()[2]
        for r in caplog.records
        if r.name == "services.core.server" and r.getMessage().startswith(f"rpc {method} ")
    ]


async def test_health_watch_and_list_answer_and_follow_the_serving_state(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="services.core.server")
    running = await _probe_server()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            listed = await health.List(health_pb2.HealthListRequest(), timeout=CALL_TIMEOUT_S)
            assert {name: s.status for name, s in listed.statuses.items()} == {
                "": health_pb2.HealthCheckResponse.SERVING,
                PROBE: health_pb2.HealthCheckResponse.SERVING,
            }
            watch = health.Watch(health_pb2.HealthCheckRequest(service=PROBE))
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            await running.set_serving(False)
            second = await watch.read()
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()

            async def watch_logged() -> bool:
                return _logged(caplog, "/grpc.health.v1.Health/Watch") != []

            await wait_for(watch_logged, CALL_TIMEOUT_S, "the cancelled Watch was not logged")
    finally:
        await running.stop(0)
    assert _logged(caplog, "/grpc.health.v1.Health/List") == ["OK"]
    assert _logged(caplog, "/grpc.health.v1.Health/Watch") == ["CANCELLED"]


async def test_failed_streams_are_logged_as_failed_with_their_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="services.core.server")
    running = await build_server(
        listen="127.0.0.1:0",
        services=[_failing_binding(), _probe_binding()],
        tracer_provider=TracerProvider(),
        interceptors=[_ParsesItself()],
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            for method, code in (("Fail", "UNKNOWN"), ("Abort", "RESOURCE_EXHAUSTED")):
                call = channel.unary_stream(f"/{FAILING}/{method}", None, None)
                answers: list[bytes] = []

                async def read_all(call: Any = call, answers: list[bytes] = answers) -> None:
                    async for answer in call(_lookup(), timeout=CALL_TIMEOUT_S):
                        answers.append(answer)

                error = await refusal(read_all())
                assert (answers, error.code().name) == ([b"first"], code)
            # A writer-style servicer reaching the log undecorated still answers.
            writer = channel.unary_stream(f"/{PROBE}/EchoByWriting", None, None)
            assert [a async for a in writer(_lookup("aa"), timeout=CALL_TIMEOUT_S)] == [b"1"]
    finally:
        await running.stop(0)
    assert _logged(caplog, f"/{FAILING}/Fail") == ["UNKNOWN"]
    assert _logged(caplog, f"/{FAILING}/Abort") == ["RESOURCE_EXHAUSTED"]
    assert _logged(caplog, f"/{PROBE}/EchoByWriting") == ["OK"]
