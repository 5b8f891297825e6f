"""The Registry service end to end: real PostgreSQL, real gRPC on loopback."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from hashex.v1 import common_pb2, registry_pb2
from tests.registry.node_harness import (
    Node,
    flip_bits,
    hamming,
    md5,
    pdq,
    running_node,
    signal,
    submission,
    submit,
)

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def node(tmp_path: Path, empty_database: str) -> AsyncIterator[Node]:
    async with running_node(tmp_path / "node", empty_database) as running:
        yield running


async def media_count(node: Node) -> int:
    stats = await node.stub.GetStats(registry_pb2.GetStatsRequest())
    return int(stats.media_count)


async def lookup(
    node: Node, *signals: common_pb2.Signal, **options: int
) -> list[registry_pb2.LookupResult]:
    response = await node.stub.Lookup(registry_pb2.LookupRequest(signals=list(signals), **options))
    return list(response.results)


async def test_exact_lookup_of_every_algorithm_reports_media_series_and_victims(node: Node) -> None:
    rng = random.Random(1)
    signals = [
        signal(common_pb2.HASH_ALGORITHM_MD5, rng.randbytes(16)),
        signal(common_pb2.HASH_ALGORITHM_SHA1, rng.randbytes(20)),
        signal(common_pb2.HASH_ALGORITHM_SHA256, rng.randbytes(32)),
        signal(common_pb2.HASH_ALGORITHM_PHOTODNA, rng.randbytes(144)),
        pdq(rng.randbytes(32)),
    ]
    await node.stub.UpsertSeries(registry_pb2.UpsertSeriesRequest(series_id="s1", name="Lantern"))
    await node.stub.UpdateVictim(
        registry_pb2.UpdateVictimRequest(
            series_id="s1",
            victim_id="v1",
            status=common_pb2.IDENTIFICATION_STATUS_IDENTIFIED,
            responsible_desk="TEST victim-ID desk",
        )
    )
    response = await submit(node.stub, [submission("m1", *signals, series=("s1",))])
    assert (response.received, response.created) == (1, 1)
    query = [signal(s.algorithm, s.value.upper()) for s in signals]
    results = await lookup(node, *query)
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    for result, sent in zip(results, signals, strict=True):
        [match] = result.matches
        assert match.kind == registry_pb2.MATCH_KIND_EXACT and match.distance == 0
        assert match.matched_signal.value == sent.value.lower()
        assert (match.media.origin, match.media.media_id) == ("test-node", "m1")
        assert len(match.media.signals) == 5
        [series] = match.series
        assert (series.series_id, series.name, series.media_count) == ("s1", "Lantern", 1)
        assert [(v.victim_id, v.status) for v in series.victims] == [
            ("v1", common_pb2.IDENTIFICATION_STATUS_IDENTIFIED)
        ]


async def test_near_matches_equal_brute_force_on_random_data(node: Node) -> None:
    rng = random.Random(7)
    stored = [rng.randbytes(32) for _ in range(1500)]
    for i in range(0, 300, 3):  # planted near copies at many distances
        stored.append(flip_bits(stored[i], rng.randrange(1, 40), rng))
    batches = [
        [submission(f"m{j}", pdq(value)) for j, value in enumerate(stored) if j // 1000 == b]
        for b in range((len(stored) + 999) // 1000)
    ]
    await submit(node.stub, *batches)
    queries = [flip_bits(stored[i], rng.randrange(0, 36), rng) for i in range(0, 600, 7)]
    queries += [rng.randbytes(32) for _ in range(20)]
    for threshold in (31, 12, 40):
        results = await lookup(
            node,
            *[pdq(q) for q in queries],
            pdq_max_distance=threshold,
            max_matches_per_signal=1000,
        )
        for query, result in zip(queries, results, strict=True):
            expected = sorted(
                (hamming(query, value), f"m{j}")
                for j, value in enumerate(stored)
                if hamming(query, value) <= threshold
            )
            got = [(m.distance, m.media.media_id) for m in result.matches]
            assert sorted(got) == expected
            assert [d for d, _ in got] == sorted(d for d, _ in got)


async def test_low_quality_pdq_is_stored_but_never_matched(node: Node) -> None:
    """Every flat or black image hashes to the same PDQ value at quality 0: blank images once
    matched each other exactly."""
    rng = random.Random(3)
    value = rng.randbytes(32)
    weak_md5 = md5(rng.randbytes(16))
    await submit(node.stub, [submission("weak", weak_md5, pdq(value, quality=20))])
    near = flip_bits(value, 3, rng)
    [result] = await lookup(node, pdq(near))
    assert list(result.matches) == []
    [exact] = await lookup(node, pdq(value))  # the stored side is below 50: no exact match
    assert list(exact.matches) == [] and not exact.low_quality
    await submit(node.stub, [submission("strong", pdq(near, quality=90))])
    [flagged] = await lookup(node, pdq(near, quality=10))  # the asked side is below 50
    assert flagged.low_quality and list(flagged.matches) == []
    # Still stored and returned as a signal of its media.
    [by_md5] = await lookup(node, weak_md5)
    [match] = by_md5.matches
    assert [(s.value, s.quality) for s in match.media.signals if s.quality] == [(value.hex(), 20)]


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [
        (
            md5(b"\x01" * 15),
            "batch[0].media[5].signals[0].value",
            "md5 needs 32 hex characters, got 30",
        ),
        (
            signal(common_pb2.HASH_ALGORITHM_SHA1, "xyz" + "0" * 37),
            "batch[0].media[5].signals[0].value",
            "sha1 value is not hexadecimal (found 'x')",
        ),
        (
            signal(42, "00" * 16),
            "batch[0].media[5].signals[0].algorithm",
            "unknown algorithm number 42",
        ),
        (
            signal(common_pb2.HASH_ALGORITHM_MD5, ""),
            "batch[0].media[5].signals[0].value",
            "md5 value is empty",
        ),
    ],
)
async def test_malformed_hash_rejects_the_whole_batch(
    node: Node, bad: common_pb2.Signal, field: str, message: str
) -> None:
    rng = random.Random(5)
    batch = [submission(f"ok{i}", md5(rng.randbytes(16))) for i in range(10)]
    batch[5] = submission("bad", bad)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await submit(node.stub, batch)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == f"{field}: {message}"
    status = rpc_status.from_call(error.value)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [(field, message)]
    assert await media_count(node) == 0


async def test_rejected_stream_batch_keeps_earlier_batches_only(node: Node) -> None:
    rng = random.Random(6)
    good = [submission(f"a{i}", md5(rng.randbytes(16))) for i in range(1000)]
    bad = [submission(f"b{i}", md5(rng.randbytes(16))) for i in range(5)]
    bad.append(submission("b-bad", md5(b"\x00" * 17)))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await submit(node.stub, good, bad)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch[1].media[5].signals[0].value: md5 needs 32 hex characters, got 34" in (
        error.value.details() or ""
    )
    assert "the 1 batches before it were stored (1000 media)" in (error.value.details() or "")
    assert await media_count(node) == 1000


async def test_oversized_lookup_and_empty_input_are_invalid(node: Node) -> None:
    too_many = [md5(bytes(16))] * 10_001
    for request, expected in (
        (registry_pb2.LookupRequest(signals=too_many), "the limit is 10000"),
        (registry_pb2.LookupRequest(), "at least one signal is required"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await node.stub.Lookup(request)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert expected in (error.value.details() or "")


async def test_resubmission_is_idempotent(node: Node) -> None:
    rng = random.Random(8)
    batch = [submission(f"m{i}", md5(rng.randbytes(16)), pdq(rng.randbytes(32))) for i in range(50)]
    first = await submit(node.stub, batch)
    second = await submit(node.stub, batch)
    assert (first.created, first.unchanged) == (50, 0)
    assert (second.created, second.updated, second.unchanged) == (0, 0, 50)
    assert await media_count(node) == 50
    [result] = await lookup(node, batch[0].signals[1])
    assert len(result.matches) == 1
    stats = await node.stub.GetStats(registry_pb2.GetStatsRequest())
    assert stats.pdq_index_size == 50


async def test_retraction_removes_from_exact_and_near_results(node: Node) -> None:
    rng = random.Random(9)
    value = rng.randbytes(32)
    hash_md5 = md5(rng.randbytes(16))
    await submit(node.stub, [submission("gone", hash_md5, pdq(value))])
    response = await node.stub.RetractMedia(
        registry_pb2.RetractMediaRequest(media_ids=["gone", "never-existed"])
    )
    assert (response.retracted, response.not_found, response.already_retracted) == (1, 1, 0)
    again = await node.stub.RetractMedia(registry_pb2.RetractMediaRequest(media_ids=["gone"]))
    assert (again.retracted, again.not_found, again.already_retracted) == (0, 0, 1)
    exact, near = await lookup(node, hash_md5, pdq(flip_bits(value, 4, rng)))
    assert list(exact.matches) == [] and list(near.matches) == []
    # Submitting it again leaves it retracted (and says so); restoring it is explicit.
    again = await submit(node.stub, [submission("gone", hash_md5, pdq(value))])
    assert (again.updated, again.retracted) == (0, 1)
    exact, near = await lookup(node, hash_md5, pdq(flip_bits(value, 4, rng)))
    assert list(exact.matches) == [] and list(near.matches) == []
    restored = await node.stub.UpdateMedia(
        registry_pb2.UpdateMediaRequest(media_ids=["gone"], restore=True)
    )
    assert restored.changed == 1
    exact, near = await lookup(node, hash_md5, pdq(flip_bits(value, 4, rng)))
    assert len(exact.matches) == 1 and len(near.matches) == 1


async def test_case_reference_never_in_replies_or_logs(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "CASE-REF-7f3a9c-SECRET"
    rng = random.Random(10)
    signals = (md5(rng.randbytes(16)), pdq(rng.randbytes(32)))
    caplog.set_level(logging.DEBUG)
    replies: list[bytes] = []
    replies.append(
        (
            await submit(
                node.stub, [submission("c1", *signals, series=("s9",), case_reference=secret)]
            )
        ).SerializeToString()
    )
    replies.append(
        (
            await node.stub.Lookup(registry_pb2.LookupRequest(signals=list(signals)))
        ).SerializeToString()
    )
    replies.append(
        (
            await node.stub.GetSeries(registry_pb2.GetSeriesRequest(series_id="s9"))
        ).SerializeToString()
    )
    replies.append((await node.stub.GetStats(registry_pb2.GetStatsRequest())).SerializeToString())
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await submit(node.stub, [submission("c2", md5(b"1"), case_reference=secret)])
    assert secret not in (error.value.details() or "")
    assert all(secret.encode() not in reply for reply in replies)
    assert replies[1].count(b"c1") >= 1  # the lookup did find the media
    assert secret not in caplog.text
    assert all(secret not in str(record.args) for record in caplog.records)


async def test_series_and_victims(node: Node) -> None:
    created = await node.stub.UpsertSeries(registry_pb2.UpsertSeriesRequest(series_id="op-1"))
    renamed = await node.stub.UpsertSeries(
        registry_pb2.UpsertSeriesRequest(series_id="op-1", name="Operation One")
    )
    assert created.created and not renamed.created and renamed.series.name == "Operation One"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await node.stub.UpdateVictim(
            registry_pb2.UpdateVictimRequest(
                series_id="nope",
                victim_id="v1",
                status=common_pb2.IDENTIFICATION_STATUS_IN_PROGRESS,
            )
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await node.stub.UpdateVictim(
            registry_pb2.UpdateVictimRequest(series_id="op-1", victim_id="v1")
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "status: status is required"
    first = await node.stub.UpdateVictim(
        registry_pb2.UpdateVictimRequest(
            series_id="op-1",
            victim_id="v1",
            status=common_pb2.IDENTIFICATION_STATUS_IN_PROGRESS,
            responsible_desk="desk A",
        )
    )
    second = await node.stub.UpdateVictim(
        registry_pb2.UpdateVictimRequest(
            series_id="op-1", victim_id="v1", status=common_pb2.IDENTIFICATION_STATUS_SAFEGUARDED
        )
    )
    assert first.created and not second.created
    assert second.victim.responsible_desk == "desk A"  # empty desk keeps the current one
    shown = await node.stub.GetSeries(registry_pb2.GetSeriesRequest(series_id="op-1"))
    assert [v.status for v in shown.series.victims] == [
        common_pb2.IDENTIFICATION_STATUS_SAFEGUARDED
    ]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await node.stub.GetSeries(registry_pb2.GetSeriesRequest(series_id="unknown"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_lookup_stream_answers_each_batch_in_order(node: Node) -> None:
    rng = random.Random(11)
    values = [rng.randbytes(16) for _ in range(30)]
    await submit(node.stub, [submission(f"m{i}", md5(v)) for i, v in enumerate(values[:10])])
    requests = [
        registry_pb2.LookupStreamRequest(
            batch_id=f"b{n}",
            lookup=registry_pb2.LookupRequest(
                signals=[md5(v) for v in values[n * 10 : n * 10 + 10]]
            ),
        )
        for n in range(3)
    ]
    responses = [r async for r in node.stub.LookupStream(iter(requests))]
    assert [r.batch_id for r in responses] == ["b0", "b1", "b2"]
    assert [sum(1 for x in r.lookup.results if x.matches) for r in responses] == [10, 0, 0]


async def test_health_reports_serving(node: Node) -> None:
    health = health_pb2_grpc.HealthStub(node.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="hashex.v1.Registry"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_restart_keeps_data_and_reloads_the_pdq_index(
    tmp_path: Path, empty_database: str
) -> None:
    rng = random.Random(12)
    value = rng.randbytes(32)
    hash_md5 = md5(rng.randbytes(16))
    async with running_node(tmp_path / "n", empty_database) as first:
        await submit(first.stub, [submission("kept", hash_md5, pdq(value))])
    async with running_node(tmp_path / "n", empty_database) as second:
        exact, near = await lookup(second, hash_md5, pdq(flip_bits(value, 5, rng)))
        assert [m.media.media_id for m in exact.matches] == ["kept"]
        assert [(m.media.media_id, m.distance) for m in near.matches] == [("kept", 5)]


async def test_export_streams_own_media_in_id_order_without_the_retracted(node: Node) -> None:
    rng = random.Random(7)
    batch = [submission(f"m{i:03d}", md5(rng.randbytes(16)), series=("s1",)) for i in range(25)]
    batch.append(submission("m999", md5(rng.randbytes(16)), case_reference="NCA/7"))
    await submit(node.stub, batch)
    await node.stub.UpsertSeries(registry_pb2.UpsertSeriesRequest(series_id="s1", name="Lantern"))
    await node.stub.RetractMedia(registry_pb2.RetractMediaRequest(media_ids=["m005"]))

    pages = [
        page async for page in node.stub.ExportMedia(registry_pb2.ExportMediaRequest(page_size=10))
    ]
    assert [len(p.media) for p in pages] == [10, 10, 5]
    exported = [m.media_id for p in pages for m in p.media]
    assert exported == [*sorted(f"m{i:03d}" for i in range(25) if i != 5), "m999"]
    assert {m.origin for p in pages for m in p.media} == {"test-node"}
    assert dict(pages[0].series_names) == {"s1": "Lantern"}
    assert dict(pages[-1].series_names) == {"s1": "Lantern"}  # m999 is in no series

    resumed = [
        m.media_id
        async for page in node.stub.ExportMedia(
            registry_pb2.ExportMediaRequest(after_media_id="m020")
        )
        for m in page.media
    ]
    assert resumed == ["m021", "m022", "m023", "m024", "m999"]

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in node.stub.ExportMedia(registry_pb2.ExportMediaRequest(page_size=1001)):
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size: 1001; at most 1000" in str(refused.value.details())
