"""A media created by a submission is logged with a state built from the submission, not read
back (services.registry.store_submit): that state must be exactly what the database holds, for
any submission the contract accepts, or peers would hold something else than the origin."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashex.v1 import federation_pb2
from services.core.algorithms import Algorithm, SignalValue
from services.core.changelog import store as changelog
from services.registry import convert, store_sql
from services.registry.model import (
    Category,
    CategoryScheme,
    MediaFlags,
    MediaSubmission,
    MediaType,
)
from services.registry.store import RegistryStore
from services.registry.store_rows import media_record
from tests.store_calls import database_of

NODE = "gb-nca"

_signal = st.one_of(
    st.builds(SignalValue, st.just(Algorithm.MD5), st.binary(min_size=16, max_size=16)),
    st.builds(SignalValue, st.just(Algorithm.SHA1), st.sampled_from([b"\x00" * 20, b"\xff" * 20])),
    st.builds(
        SignalValue,
        st.just(Algorithm.PDQ),
        st.sampled_from([b"\x01" * 32, b"\x02" * 32, b"\x03" * 32]),
        st.one_of(st.none(), st.integers(0, 100)),
    ),
)
# Ids whose order differs between byte order and a language's collation.
_series = st.lists(st.sampled_from(["a", "B", "b-2", "b.1", "Z:9", "_x", "a_b", "A"]), max_size=5)


@st.composite
def _submission(draw: st.DrawFn, media_id: str) -> MediaSubmission:
    signals = draw(st.lists(_signal, min_size=1, max_size=6))
    # At most one md5 and sha1 per media, as the contract allows.
    kept: dict[Any, SignalValue] = {}
    for s in signals:
        key = s.algorithm if s.algorithm != Algorithm.PDQ else (s.algorithm, s.value)
        kept.setdefault(key, s)
    return MediaSubmission(
        media_id=media_id,
        signals=tuple(kept.values()),
        media_type=draw(st.sampled_from([None, MediaType.IMAGE, MediaType.VIDEO])),
        category=draw(
            st.sampled_from(
                [None, Category(CategoryScheme.VICS_UK, "3"), Category(CategoryScheme.CAID_UK, "A")]
            )
        ),
        flags=MediaFlags.from_bits(draw(st.integers(0, 15))),
        series_ids=tuple(draw(_series)),
    )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
async def test_a_created_media_is_logged_as_stored(db_pool: Any, data: st.DataObject) -> None:
    database = database_of(db_pool)
    store = RegistryStore(node_id=NODE)
    async with database.transaction() as conn:
        await conn.execute("TRUNCATE media, signals, series, media_series, change_log CASCADE")
        batch = [data.draw(_submission(f"m{i}")) for i in range(data.draw(st.integers(1, 4)))]
        # A media id given twice in one batch is two successive submissions.
        if data.draw(st.booleans()):
            batch.append(data.draw(_submission("m0")))
        await store.submit_media_batch(conn, batch=batch)
        logged = {}
        for row in await changelog.read_page(conn, after_seq=0, limit=1000):
            entry = federation_pb2.ChangeEntry.FromString(row.entry)
            if entry.HasField("media"):
                logged[entry.media.media_id] = entry.media
        rows = await conn.fetch(
            store_sql.MEDIA_SELECT + "WHERE m.origin = $1 ORDER BY m.media_id", NODE
        )
    stored = {r["media_id"]: convert.media_to_proto(media_record(r)) for r in rows}
    assert logged == stored
