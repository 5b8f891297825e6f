"""A submission merges into what is stored and never erases; explicit changes (UpdateMedia, the
update masks of UpsertSeries and UpdateVictim) are what clear, unlink and restore. Real
PostgreSQL, real gRPC on loopback."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from hashex.v1 import common_pb2, federation_pb2, registry_pb2
from services.core.changelog.store import EntryKind
from tests.registry.node_harness import Node, md5, pdq, running_node, submission, submit

CAID_A = common_pb2.Category(scheme=common_pb2.CATEGORY_SCHEME_CAID_UK, code="A")
VICS_1 = common_pb2.Category(scheme=common_pb2.CATEGORY_SCHEME_VICS_US, code="1")


@pytest.fixture
async def node(tmp_path: Path, empty_database: str) -> AsyncIterator[Node]:
    async with running_node(tmp_path / "node", empty_database) as running:
        yield running


def _media(
    media_id: str, *signals: common_pb2.Signal, **fields: object
) -> registry_pb2.MediaSubmission:
    message = submission(media_id, *(signals or (md5(media_id.encode().ljust(16, b".")),)))
    for name, value in fields.items():
        if isinstance(value, common_pb2.Category):
            message.category.CopyFrom(value)
        elif name == "series":
            message.series_ids.extend(value)  # type: ignore[arg-type]
        elif name == "flags":
            message.flags.CopyFrom(value)  # type: ignore[arg-type]
    return message


async def stored(node: Node, media_id: str) -> common_pb2.Media:
    """The media as a lookup of its first md5 reports it (the node's own record)."""
    key = md5(media_id.encode().ljust(16, b"."))
    response = await node.stub.Lookup(registry_pb2.LookupRequest(signals=[key]))
    [match] = response.results[0].matches
    return match.media


async def log_entries(node: Node) -> list[tuple[EntryKind, federation_pb2.ChangeEntry]]:
    pool = node.running.database.pool
    rows = await pool.fetch("SELECT kind, entry FROM change_log ORDER BY seq")
    entries = []
    for row in rows:
        entry = federation_pb2.ChangeEntry()
        entry.ParseFromString(bytes(row["entry"]))
        entries.append((EntryKind(row["kind"]), entry))
    return entries


async def test_resubmitting_without_category_or_series_keeps_them(node: Node) -> None:
    """`hashex submit exhibit-7.jsonl` again without --category/--series once wiped both, and
    the wiped record replicated."""
    flags = common_pb2.MediaFlags(distributed=True)
    await submit(node.stub, [_media("m7", category=CAID_A, series=("op-lantern",), flags=flags)])
    entries_before = len(await log_entries(node))
    response = await submit(node.stub, [_media("m7")])
    assert (response.updated, response.unchanged) == (0, 1)
    media = await stored(node, "m7")
    assert (media.category.code, list(media.series_ids)) == ("A", ["op-lantern"])
    assert media.flags.distributed
    assert len(await log_entries(node)) == entries_before  # nothing changed, nothing logged


async def test_a_second_series_is_added_and_given_fields_are_set(node: Node) -> None:
    await submit(node.stub, [_media("m", series=("s1",), category=CAID_A)])
    rng = random.Random(3)
    pdq_value = pdq(rng.randbytes(32))
    response = await submit(node.stub, [_media("m", pdq_value, series=("s2",), category=VICS_1)])
    assert response.updated == 1
    media = await stored(node, "m")
    assert list(media.series_ids) == ["s1", "s2"]
    assert (media.category.scheme, media.category.code) == (VICS_1.scheme, "1")
    assert len(media.signals) == 2  # the md5 stayed, the PDQ hash was added
    kind, last = (await log_entries(node))[-1]
    assert kind == EntryKind.MEDIA and list(last.media.series_ids) == ["s1", "s2"]


async def test_a_retracted_media_stays_retracted_and_is_counted(node: Node) -> None:
    await submit(node.stub, [_media("gone"), _media("kept")])
    await node.stub.RetractMedia(registry_pb2.RetractMediaRequest(media_ids=["gone"]))
    response = await submit(node.stub, [_media("gone", category=CAID_A), _media("kept")])
    assert (response.received, response.retracted, response.unchanged) == (2, 1, 1)
    lookup = await node.stub.Lookup(
        registry_pb2.LookupRequest(signals=[md5(b"gone".ljust(16, b"."))])
    )
    assert list(lookup.results[0].matches) == []


async def test_a_submission_past_the_stored_limits_is_refused_naming_the_media(
    node: Node,
) -> None:
    rng = random.Random(5)
    first = [pdq(rng.randbytes(32)) for _ in range(6)]
    await submit(node.stub, [_media("video", md5(b"video".ljust(16, b".")), *first)])
    more = [pdq(rng.randbytes(32)) for _ in range(3)]
    before = await stored(node, "video")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit(node.stub, [_media("other"), _media("video", *more)])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert "batch[0].media[1].signals" in details and "'video'" in details
    assert "9 pdq signals; at most 8" in details
    assert await stored(node, "video") == before
    lookup = await node.stub.Lookup(
        registry_pb2.LookupRequest(signals=[md5(b"other".ljust(16, b"."))])
    )
    assert list(lookup.results[0].matches) == []  # the batch stored nothing
    # A second value of an algorithm a media may hold once is refused the same way.
    with pytest.raises(grpc.aio.AioRpcError) as twice:
        await submit(node.stub, [_media("video", md5(b"another md5....."))])
    assert "2 md5 signals; at most 1" in (twice.value.details() or "")


async def test_series_memberships_are_bounded(node: Node) -> None:
    await submit(node.stub, [_media("m", series=tuple(f"s{i}" for i in range(16)))])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit(node.stub, [_media("m", series=("one-more",))])
    assert "batch[0].media[0].series_ids" in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await submit(node.stub, [_media("n", series=tuple(f"t{i}" for i in range(17)))])
    assert "17 series; at most 16" in (too_many.value.details() or "")


def _update(
    *media_ids: str,
    paths: tuple[str, ...] = (),
    values: registry_pb2.MediaUpdate | None = None,
    **fields: object,
) -> registry_pb2.UpdateMediaRequest:
    request = registry_pb2.UpdateMediaRequest(
        media_ids=list(media_ids), update_mask=FieldMask(paths=list(paths)), **fields
    )
    if values is not None:
        request.values.CopyFrom(values)
    return request


async def test_update_media_clears_only_what_its_mask_names(node: Node) -> None:
    flags = common_pb2.MediaFlags(distributed=True, victim_identified=True)
    await submit(node.stub, [_media("m", category=CAID_A, flags=flags, series=("s1",))])
    response = await node.stub.UpdateMedia(_update("m", paths=("category", "flags.distributed")))
    assert (response.changed, response.unchanged) == (1, 0)
    [media] = response.media
    assert not media.HasField("category")
    assert (media.flags.distributed, media.flags.victim_identified) == (False, True)
    assert list(media.series_ids) == ["s1"]
    again = await node.stub.UpdateMedia(_update("m", paths=("category",)))
    assert (again.changed, again.unchanged) == (0, 1)
    kinds = [kind for kind, _ in await log_entries(node)]
    assert kinds.count(EntryKind.MEDIA) == 2  # the submission, then the one change


async def test_update_media_sets_category_type_and_leaves_a_series(node: Node) -> None:
    await submit(node.stub, [_media("a", series=("s1", "s2")), _media("b", series=("s1",))])
    values = registry_pb2.MediaUpdate(category=VICS_1, media_type=common_pb2.MEDIA_TYPE_VIDEO)
    response = await node.stub.UpdateMedia(
        _update("a", "b", paths=("category", "media_type"), values=values, leave_series_ids=["s1"])
    )
    assert response.changed == 2
    assert [list(m.series_ids) for m in response.media] == [["s2"], []]
    assert {m.media_type for m in response.media} == {common_pb2.MEDIA_TYPE_VIDEO}
    s1 = await node.stub.GetSeries(registry_pb2.GetSeriesRequest(series_id="s1"))
    assert s1.series.media_count == 0


async def test_update_media_restores_a_retracted_media_which_matches_again(node: Node) -> None:
    rng = random.Random(7)
    value = rng.randbytes(32)
    await submit(node.stub, [_media("m", md5(b"m".ljust(16, b".")), pdq(value), series=("s1",))])
    await node.stub.RetractMedia(registry_pb2.RetractMediaRequest(media_ids=["m"]))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await node.stub.UpdateMedia(_update("m", paths=("category",)))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    response = await node.stub.UpdateMedia(_update("m", restore=True))
    assert response.changed == 1
    near = bytes([value[0] ^ 0x03]) + value[1:]
    lookup = await node.stub.Lookup(registry_pb2.LookupRequest(signals=[pdq(near)]))
    assert [m.media.media_id for m in lookup.results[0].matches] == ["m"]
    s1 = await node.stub.GetSeries(registry_pb2.GetSeriesRequest(series_id="s1"))
    assert s1.series.media_count == 1
    kind, last = (await log_entries(node))[-1]
    assert kind == EntryKind.MEDIA and last.media.media_id == "m"


async def test_update_media_changes_all_or_nothing(node: Node) -> None:
    await submit(node.stub, [_media("known", category=CAID_A)])
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await node.stub.UpdateMedia(_update("known", "unknown", paths=("category",)))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'unknown'" in (missing.value.details() or "")
    assert (await stored(node, "known")).category.code == "A"
    for bad, field in (
        (_update("known"), "update_mask"),
        (_update("known", paths=("signals",)), "update_mask.paths[0]"),
        (_update("known", paths=("media_type",)), "values.media_type"),
        (_update("known", "known", restore=True), "media_ids[1]"),
        (_update(restore=True), "media_ids"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await node.stub.UpdateMedia(bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (refused.value.details() or "").startswith(field), refused.value.details()


async def test_series_name_and_victim_desk_are_cleared_only_explicitly(node: Node) -> None:
    stub = node.stub
    await stub.UpsertSeries(registry_pb2.UpsertSeriesRequest(series_id="s1", name="Lantern"))
    kept = await stub.UpsertSeries(registry_pb2.UpsertSeriesRequest(series_id="s1"))
    assert kept.series.name == "Lantern"
    cleared = await stub.UpsertSeries(
        registry_pb2.UpsertSeriesRequest(series_id="s1", update_mask=FieldMask(paths=["name"]))
    )
    assert cleared.series.name == ""

    await stub.UpdateVictim(
        registry_pb2.UpdateVictimRequest(
            series_id="s1",
            victim_id="v1",
            status=common_pb2.IDENTIFICATION_STATUS_IN_PROGRESS,
            responsible_desk="GB desk",
        )
    )
    desk_only = registry_pb2.UpdateVictimRequest(
        series_id="s1", victim_id="v1", update_mask=FieldMask(paths=["responsible_desk"])
    )
    victim = (await stub.UpdateVictim(desk_only)).victim
    assert (victim.status, victim.responsible_desk) == (
        common_pb2.IDENTIFICATION_STATUS_IN_PROGRESS,
        "",
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.UpdateVictim(
            registry_pb2.UpdateVictimRequest(
                series_id="s1", victim_id="v2", update_mask=FieldMask(paths=["responsible_desk"])
            )
        )
    assert "status: required to create victim 'v2'" in (refused.value.details() or "")


async def test_a_series_holds_at_most_100_victims(node: Node) -> None:
    await node.stub.UpsertSeries(registry_pb2.UpsertSeriesRequest(series_id="s1"))
    for i in range(100):
        await node.stub.UpdateVictim(
            registry_pb2.UpdateVictimRequest(
                series_id="s1",
                victim_id=f"v{i}",
                status=common_pb2.IDENTIFICATION_STATUS_UNIDENTIFIED,
            )
        )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await node.stub.UpdateVictim(
            registry_pb2.UpdateVictimRequest(
                series_id="s1",
                victim_id="v100",
                status=common_pb2.IDENTIFICATION_STATUS_UNIDENTIFIED,
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "already has 100 victims" in (refused.value.details() or "")


@pytest.mark.parametrize(
    "request_message, field",
    [
        (registry_pb2.UpsertSeriesRequest(series_id="s1", name="a\x00b"), "name"),
        (
            registry_pb2.UpdateVictimRequest(
                series_id="s1",
                victim_id="v1",
                status=common_pb2.IDENTIFICATION_STATUS_UNIDENTIFIED,
                responsible_desk="desk\x00",
            ),
            "responsible_desk",
        ),
    ],
    ids=["series-name", "desk"],
)
async def test_a_nul_character_in_text_is_invalid_argument_naming_the_field(
    node: Node, request_message: object, field: str
) -> None:
    """PostgreSQL text holds no NUL: it once reached the database and answered INTERNAL."""
    await node.stub.UpsertSeries(registry_pb2.UpsertSeriesRequest(series_id="s1"))
    call = (
        node.stub.UpsertSeries
        if isinstance(request_message, registry_pb2.UpsertSeriesRequest)
        else node.stub.UpdateVictim
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(request_message)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith(f"{field}:")
    assert "NUL" in (refused.value.details() or "")


async def test_a_nul_in_case_data_is_refused_too(node: Node) -> None:
    message = _media("m")
    message.case_data.file_path = "/evidence/a\x00b.jpg"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit(node.stub, [message])
    assert "media[0].case_data.file_path" in (refused.value.details() or "")
