"""`hashex flags`: the overlap flags the node holds (docs/linkage.md "Flags (sync)") — list
them, acknowledge or resolve one, or follow them as they are raised and change.

`flags watch` follows WatchFlags and, when the stream is cut (the node restarts, the network
drops, or no keep-alive came for WATCHDOG_S), connects again and resumes after the last event
it printed: each event is printed once.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from hashex.v1 import flags_pb2, flags_pb2_grpc
from services.cli import exit_codes
from services.cli.node_client import add_node_options, node_channel, run_command

KINDS = {
    "already-identified": flags_pb2.FLAG_KIND_ALREADY_IDENTIFIED,
    "concurrent-work": flags_pb2.FLAG_KIND_CONCURRENT_WORK,
    "new-material": flags_pb2.FLAG_KIND_NEW_MATERIAL,
}
STATES = {
    "open": flags_pb2.FLAG_STATE_VALUE_OPEN,
    "acknowledged": flags_pb2.FLAG_STATE_VALUE_ACKNOWLEDGED,
    "resolved": flags_pb2.FLAG_STATE_VALUE_RESOLVED,
}
_KIND_NAMES = {v: k for k, v in KINDS.items()}
_STATE_NAMES = {v: k for k, v in STATES.items()}
_EVENT_NAMES = {
    flags_pb2.FLAG_EVENT_KIND_RAISED: "raised",
    flags_pb2.FLAG_EVENT_KIND_EVIDENCE_CHANGED: "evidence-changed",
    flags_pb2.FLAG_EVENT_KIND_STATE_CHANGED: "state-changed",
}
# Flags asked for per ListFlags page (the contract's largest).
PAGE_SIZE = 1_000
# No message (the node sends a keep-alive every 30 s) for this long: the stream is dead.
WATCHDOG_S = 75.0
# Pauses between reconnections, doubling up to the last.
RECONNECT_PAUSES_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
# Codes after which a watch connects again; any other ends the command.
_RETRIED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "flags",
        help="overlap flags: list, acknowledge, resolve, watch",
        description=(
            "List the overlap flags the node holds (newest raised first): series of your\n"
            "agency linked to another agency's series whose victim is already identified, on\n"
            "which both agencies work, or to which another agency's media link. `ack` and\n"
            "`resolve` change a flag's state (roles victim-id or supervisor); the other agency\n"
            "of the flag is told. `watch` prints events as they happen."
        ),
        epilog=(
            "examples:\n"
            "  hashex flags --state open --cert units/alice.pem\n"
            "  hashex flags list --kind concurrent-work --json\n"
            "  hashex flags ack 3f2a...e9 --cert units/vid.pem\n"
            "  hashex flags watch --after 120 --json\n\n" + exit_codes.EPILOG
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _list_options(parser)
    add_node_options(parser)
    parser.set_defaults(func=lambda ns: run_command(_list, ns))
    actions = parser.add_subparsers(dest="action", metavar="{list,ack,resolve,watch}")
    listing = actions.add_parser("list", help="list the flags (as `hashex flags` alone does)")
    _list_options(listing)
    add_node_options(listing)
    listing.set_defaults(func=lambda ns: run_command(_list, ns))
    for name, state in (("ack", "acknowledged"), ("resolve", "resolved")):
        change = actions.add_parser(name, help=f"mark a flag {state}")
        change.add_argument("flag_id", metavar="ID", help="the flag's id (64 hex characters)")
        change.add_argument("--json", action="store_true", help="print the flag as JSON")
        add_node_options(change)
        change.set_defaults(func=lambda ns, s=state: run_command(lambda n: _set(n, s), ns))
    watch = actions.add_parser("watch", help="print flag events as they happen")
    watch.add_argument(
        "--after", type=int, default=0, metavar="N", help="start after event N (default: 0)"
    )
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    add_node_options(watch)
    watch.set_defaults(func=lambda ns: run_command(_watch, ns))


def _list_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=sorted(KINDS), help="only flags of this kind")
    parser.add_argument("--state", choices=sorted(STATES), help="only flags in this state")
    parser.add_argument("--json", action="store_true", help="print the flags as JSON")


def _list(ns: argparse.Namespace) -> int:
    request = flags_pb2.ListFlagsRequest(
        kind=KINDS[ns.kind] if ns.kind else flags_pb2.FLAG_KIND_UNSPECIFIED,
        state=STATES[ns.state] if ns.state else flags_pb2.FLAG_STATE_VALUE_UNSPECIFIED,
        limit=PAGE_SIZE,
    )
    with node_channel(ns) as channel:
        stub = flags_pb2_grpc.FlagsStub(channel)
        found: list[flags_pb2.Flag] = []
        while True:
            page = stub.ListFlags(request, timeout=ns.timeout)
            found.extend(page.flags)
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
    if ns.json:
        print(json.dumps([flag_document(f) for f in found], indent=2))
    else:
        print_table(found)
    return exit_codes.OK


def _set(ns: argparse.Namespace, state: str) -> int:
    request = flags_pb2.SetFlagStateRequest(flag_id=ns.flag_id, state=STATES[state])
    with node_channel(ns) as channel:
        answer = flags_pb2_grpc.FlagsStub(channel).SetFlagState(request, timeout=ns.timeout)
    if ns.json:
        print(json.dumps(flag_document(answer.flag), indent=2))
    else:
        print(f"flag {answer.flag.id} is {_STATE_NAMES.get(answer.flag.state, '?')}")
    return exit_codes.OK


def _watch(ns: argparse.Namespace) -> int:
    with node_channel(ns) as channel:
        stub = flags_pb2_grpc.FlagsStub(channel)

        def open_stream(after: int) -> Any:
            return stub.WatchFlags(flags_pb2.WatchFlagsRequest(after_event=after))

        for event in follow(open_stream, after=ns.after, sleep=time.sleep):
            print(_event_line(event, as_json=ns.json), flush=True)
    return exit_codes.OK


def follow(
    open_stream: Callable[[int], Any],
    *,
    after: int,
    sleep: Callable[[float], None],
    watchdog_s: float = WATCHDOG_S,
) -> Iterator[flags_pb2.FlagEvent]:
    """The events after `after`, each once, across reconnections; keep-alives are not yielded.
    `open_stream(after)` opens a WatchFlags call; a cut one is opened again after the last id.
    A code other than those retried ends the iteration by raising (the caller maps it)."""
    pauses = 0
    while True:
        call = open_stream(after)
        alive = _Watchdog(call, watchdog_s)
        try:
            for event in _events(call):
                alive.fed()
                pauses = 0
                if event.kind == flags_pb2.FLAG_EVENT_KIND_KEEPALIVE or event.event_id <= after:
                    continue
                after = event.event_id
                yield event
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            if code not in _RETRIED and not alive.fired:
                raise
        finally:
            alive.stop()
        sleep(RECONNECT_PAUSES_S[min(pauses, len(RECONNECT_PAUSES_S) - 1)])
        pauses += 1
        print(f"hashex: flag watch cut; resuming after event {after}", file=sys.stderr)


def _events(call: Iterable[flags_pb2.FlagEvent]) -> Iterator[flags_pb2.FlagEvent]:
    yield from call


class _Watchdog:
    """Cancels `call` when nothing arrived for `timeout_s` (a dead stream)."""

    def __init__(self, call: Any, timeout_s: float) -> None:
        self._call = call
        self._timeout_s = timeout_s
        self.fired = False
        self._timer: threading.Timer | None = None
        self.fed()

    def fed(self) -> None:
        self.stop()
        self._timer = threading.Timer(self._timeout_s, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        cancel = getattr(self._call, "cancel", None)
        if cancel is not None:
            cancel()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def flag_document(flag: flags_pb2.Flag) -> dict[str, Any]:
    return MessageToDict(flag, preserving_proto_field_name=True)


def _event_line(event: flags_pb2.FlagEvent, *, as_json: bool) -> str:
    name = _EVENT_NAMES.get(event.kind, "?")
    if as_json:
        document = {"event_id": event.event_id, "event": name, "flag": flag_document(event.flag)}
        return json.dumps(document, separators=(",", ":"))
    return f"{event.event_id}  {name:<16}  {_row(event.flag)}"


def _row(flag: flags_pb2.Flag) -> str:
    other = (
        f"{flag.other_series.origin}/{flag.other_series.series_id}"
        if flag.HasField("other_series")
        else f"{flag.other_agency} media"
    )
    return (
        f"{flag.id[:12]}  {_KIND_NAMES.get(flag.kind, '?'):<18}  "
        f"{_STATE_NAMES.get(flag.state, '?'):<12}  "
        f"{flag.series.origin}/{flag.series.series_id} ~ {other}  "
        f"linked {flag.evidence.linked_media} (exact {flag.evidence.exact_media})"
    )


def print_table(found: list[flags_pb2.Flag]) -> None:
    if not found:
        print("no flags")
        return
    print(f"{'ID':<12}  {'KIND':<18}  {'STATE':<12}  SERIES ~ OTHER  EVIDENCE")
    for flag in found:
        print(_row(flag))
    print(f"{len(found)} flag(s); full ids with --json")
