"""The series media-count triggers (registry migrations 0005, 0006) are planned when they run,
never from a plan a connection cached while the tables were small: such a plan joined each
batch of new links against a sequential scan of every media, a cost that grew with the node."""

from __future__ import annotations

from typing import Any

_LINKS_ADDED = "UPDATE series se SET media_count = se.media_count + d.n"


async def _trigger_plans(conn: Any, statement: str) -> list[str]:
    """The plans of the trigger statements `statement` ran, as auto_explain reports them."""
    plans: list[str] = []

    def listen(_conn: Any, message: Any) -> None:
        if _LINKS_ADDED in message.message:
            plans.append(message.message)

    conn.add_log_listener(listen)
    try:
        async with conn.transaction():
            await conn.execute(
                "LOAD 'auto_explain'; SET LOCAL auto_explain.log_min_duration = 0;"
                " SET LOCAL auto_explain.log_nested_statements = on;"
                " SET LOCAL auto_explain.log_level = warning"
            )
            await conn.execute(statement)
    finally:
        conn.remove_log_listener(listen)
    return plans


async def _add_media(conn: Any, first: int, count: int) -> None:
    await conn.execute(
        "INSERT INTO media (origin, media_id, media_type, flags, first_seen)"
        " SELECT 'gb-nca', 'm' || i, 1, 0, now() FROM generate_series($1::int, $2::int) i",
        first,
        first + count - 1,
    )


def _link(first: int, count: int) -> str:
    """Link media m<first>… (`count` of them) to the series."""
    last = first + count - 1
    return (
        "INSERT INTO media_series (media_row, series_row) SELECT m.id, se.id FROM media m, series"
        f" se WHERE m.media_id IN (SELECT 'm' || i FROM generate_series({first}, {last}) i)"
    )


async def test_links_are_counted_by_index_once_the_media_table_has_grown(db_pool: Any) -> None:
    async with db_pool.acquire() as conn:
        await conn.execute("INSERT INTO series (origin, series_id) VALUES ('gb-nca', 's1')")
        await _add_media(conn, 1, 100)
        await conn.execute(_link(1, 100))  # planned now, on an almost empty media table
        await _add_media(conn, 101, 50_000)
        [plan] = await _trigger_plans(conn, _link(50_001, 100))
        count = await conn.fetchval("SELECT media_count FROM series")
    assert "Seq Scan on media" not in plan, plan
    assert count == 200
