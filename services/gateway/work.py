"""What a request message asks of the node, in the units the rate limits charge: each hash
looked up, media submitted, id retracted or changed counts one. Methods not listed cost nothing
beyond the call itself (one token at admission).

Requests reach the gateway's checks as raw bytes; when the handler parses them (in process) the
parsed message is counted, and when it forwards them unparsed (services apart) the bytes are
parsed here with the method's request type, once, to count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError, Message

from hashex.v1 import federation_pb2, registry_pb2


@dataclass(frozen=True)
class Work:
    request_type: type[Message]
    units: Callable[[Any], int]


WORK: Mapping[str, Work] = {
    "/hashex.v1.Registry/Lookup": Work(registry_pb2.LookupRequest, lambda m: len(m.signals)),
    "/hashex.v1.Registry/LookupStream": Work(
        registry_pb2.LookupStreamRequest, lambda m: len(m.lookup.signals)
    ),
    "/hashex.v1.Registry/SubmitMedia": Work(
        registry_pb2.SubmitMediaRequest, lambda m: len(m.media)
    ),
    "/hashex.v1.Registry/RetractMedia": Work(
        registry_pb2.RetractMediaRequest, lambda m: len(m.media_ids)
    ),
    "/hashex.v1.Registry/UpdateMedia": Work(
        registry_pb2.UpdateMediaRequest, lambda m: len(m.media_ids)
    ),
    "/hashex.v1.Units/FederatedLookup": Work(
        federation_pb2.FederatedLookupRequest, lambda m: len(m.lookup.signals)
    ),
    "/hashex.v1.Federation/PeerLookup": Work(
        federation_pb2.PeerLookupRequest, lambda m: len(m.lookup.signals)
    ),
}


def units_of(method: str, message: Any) -> int:
    """The work one request message of `method` asks for; `message` parsed or raw bytes (a raw
    message that does not parse costs nothing here: the servicer refuses it)."""
    work = WORK.get(method)
    if work is None:
        return 0
    if isinstance(message, bytes):
        parsed = work.request_type()
        try:
            parsed.ParseFromString(message)
        except DecodeError:
            return 0
        message = parsed
    return work.units(message)
