"""`hashex flags` against a real node (admin socket and a unit certificate), and `flags watch`'s
resumption across cut streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hashex.v1 import flags_pb2
from services.cli import exit_codes
from services.cli.flags_command import follow
from services.cli.main import main as hashex_main
from tests.federation.test_security import lone_node
from tests.sync.flags.linkage_double import InMemoryLinkage
from tests.sync.flags.test_engine import IDENTIFIED, NOTHING, linked
from tests.sync.flags.test_flags_rpc import AI_ID, OURS, THEIRS, raise_flags


async def hashex(*args: str | Path) -> int:
    return await asyncio.to_thread(hashex_main, [str(a) for a in args])


async def test_list_ack_resolve_and_refusals(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with lone_node(tmp_path, pg_server) as node:
        linkage = InMemoryLinkage(victims={1: NOTHING, 2: IDENTIFIED})
        linkage.link(linked(OURS, THEIRS))
        await raise_flags(node, linkage)
        data = ("--data-dir", node.data_dir)
        capsys.readouterr()

        assert await hashex("flags", *data) == exit_codes.OK
        table = capsys.readouterr().out
        assert AI_ID[:12] in table and "already-identified" in table and "open" in table

        assert await hashex("flags", "ack", AI_ID, *data) == exit_codes.OK
        assert "acknowledged" in capsys.readouterr().out
        assert await hashex("flags", "--state", "acknowledged", "--json", *data) == 0
        [flag] = json.loads(capsys.readouterr().out)
        assert flag["id"] == AI_ID and flag["state"] == "FLAG_STATE_VALUE_ACKNOWLEDGED"
        assert await hashex("flags", "--kind", "new-material", "--json", *data) == 0
        assert json.loads(capsys.readouterr().out) == []
        assert await hashex("flags", "list", "--state", "acknowledged", "--json", *data) == 0
        assert [f["id"] for f in json.loads(capsys.readouterr().out)] == [AI_ID]

        assert await hashex("flags", "resolve", "f" * 64, *data) == exit_codes.NOT_FOUND
        assert await hashex("flags", "resolve", "nope", *data) == exit_codes.BAD_INPUT
        assert "64 lowercase hex" in capsys.readouterr().err

        out = tmp_path / "reader"
        issue = ["unit", "issue", "reader", "--role", "analyst", "--out", str(out)]
        assert await hashex(*issue, *data) == 0
        gateway = ("--cert", out / "reader.pem", "--gateway", node.running.gateway_address)
        capsys.readouterr()
        assert await hashex("flags", "resolve", AI_ID, *gateway, *data) == exit_codes.REFUSED
        assert "victim-id" in capsys.readouterr().err
        assert await hashex("flags", "--json", *gateway, *data) == exit_codes.OK
        [flag] = json.loads(capsys.readouterr().out)
        assert flag["state"] == "FLAG_STATE_VALUE_ACKNOWLEDGED"


class _Cut(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """A stream cut the way grpc reports it."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "cut"


def _event(event_id: int, kind: int = flags_pb2.FLAG_EVENT_KIND_RAISED) -> flags_pb2.FlagEvent:
    return flags_pb2.FlagEvent(event_id=event_id, kind=kind)  # type: ignore[arg-type]


def test_a_watch_resumes_after_the_last_event_it_printed() -> None:
    asked: list[int] = []
    # What the node streams after each cursor: the first stream is cut after two events, the
    # second repeats an event from before the cut (it must not be printed twice).
    streams = [
        [_event(1), _event(2, flags_pb2.FLAG_EVENT_KIND_KEEPALIVE), _event(2)],
        [_event(2), _event(3)],
    ]

    def open_stream(after: int) -> Iterator[flags_pb2.FlagEvent]:
        asked.append(after)
        events = streams[len(asked) - 1]

        def stream() -> Iterator[flags_pb2.FlagEvent]:
            yield from events
            if len(asked) == 1:
                raise _Cut(grpc.StatusCode.UNAVAILABLE)
            raise _Cut(grpc.StatusCode.PERMISSION_DENIED)

        return stream()

    seen: list[int] = []
    with pytest.raises(grpc.RpcError):
        for event in follow(open_stream, after=0, sleep=lambda s: None):
            seen.append(event.event_id)
    assert seen == [1, 2, 3]
    assert asked == [0, 2]
