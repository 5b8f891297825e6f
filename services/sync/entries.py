"""What a receiver reads from a peer's change-log entries, and the entries sync itself writes
(signing-key rotations and revocations).

The origin writes each change as a serialized `ChangeEntry` carrying the full state of the record
after the change (services.registry.change_entries, in the transaction of the change). A receiver
parses entries only after the batch carrying them verified, and validates them as strictly as the
registry validates a submission, limits per record included: a peer's bytes are input like any
other, and a record claiming another origin than the batch's is refused (only the origin ever
writes its records). A refused entry is quarantined by the receiver, never applied
(services.sync.batches).

Pure: no SQL, no gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache, partial

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from hashex.v1 import common_pb2, federation_pb2
from services.core.algorithms import ALGORITHMS, AlgorithmSpec, SignalValue, distinct_signals
from services.core.changelog.store import EntryKind
from services.core.errors import InvalidArgument
from services.registry import convert, model
from services.registry.contract import (
    MAX_SERIES_PER_MEDIA,
    MAX_SIGNALS_PER_MEDIA,
    MAX_VICTIMS_PER_SERIES,
    per_algorithm_limit,
    signal_set_problems,
)
from services.registry.replicated import (
    ReplicatedChange,
    ReplicatedMedia,
    ReplicatedRetraction,
    ReplicatedSeries,
)
from services.sync.flags.ids import check_flag_id

KIND_OF_FIELD = {
    "media": EntryKind.MEDIA,
    "retraction": EntryKind.RETRACTION,
    "series": EntryKind.SERIES,
    "key_rotation": EntryKind.KEY_ROTATION,
    "key_revocation": EntryKind.KEY_REVOCATION,
    "flag_state": EntryKind.FLAG_STATE,
}


# --- writing (the origin's key rotations; its records' entries are the registry's) ----------


def key_rotation_entry(
    seq: int,
    changed_at: datetime,
    *,
    key_id: str,
    public_key: bytes,
    signed_by_key_id: str,
    signature: bytes,
) -> bytes:
    return federation_pb2.ChangeEntry(
        seq=seq,
        changed_at=convert.timestamp(changed_at),
        key_rotation=federation_pb2.KeyRotation(
            key_id=key_id,
            public_key=public_key,
            signed_by_key_id=signed_by_key_id,
            signature=signature,
        ),
    ).SerializeToString()


def key_revocation_entry(
    seq: int, changed_at: datetime, *, key_id: str, revoked_from_seq: int
) -> bytes:
    return federation_pb2.ChangeEntry(
        seq=seq,
        changed_at=convert.timestamp(changed_at),
        key_revocation=federation_pb2.KeyRevocation(
            key_id=key_id, revoked_from_seq=revoked_from_seq
        ),
    ).SerializeToString()


def flag_state_entry(seq: int, changed_at: datetime, *, flag_id: str, state: int) -> bytes:
    """A state change of an overlap flag by one of this node's units (ChangeEntry field 8)."""
    return federation_pb2.ChangeEntry(
        seq=seq,
        changed_at=convert.timestamp(changed_at),
        flag_state=federation_pb2.FlagState(flag_id=flag_id, state=state),  # type: ignore[arg-type]
    ).SerializeToString()


# --- reading (a receiver) -------------------------------------------------------------------


@dataclass(frozen=True)
class RotatedKey:
    """A new key of the origin; the caller checks `signature` by `signed_by_key_id`."""

    seq: int
    key_id: str
    public_key: bytes
    signed_by_key_id: str
    signature: bytes


@dataclass(frozen=True)
class RevokedKey:
    """One of the origin's keys revoked from `revoked_from_seq` on (vouched for by the batch's
    signature); the caller checks the key id."""

    seq: int
    key_id: str
    revoked_from_seq: int


@dataclass(frozen=True)
class ReplicatedFlagState:
    """A flag's state as the origin's unit set it at `changed_at`; kept when newest."""

    seq: int
    changed_at: datetime
    flag_id: str
    # A FlagStateValue number: 1 OPEN, 2 ACKNOWLEDGED, 3 RESOLVED.
    state: int


# The FlagStateValue numbers a FlagState entry may carry.
FLAG_STATES = frozenset({1, 2, 3})

Change = ReplicatedChange | RotatedKey | RevokedKey | ReplicatedFlagState


def decode_entry(data: bytes) -> federation_pb2.ChangeEntry:
    entry = federation_pb2.ChangeEntry()
    try:
        entry.ParseFromString(data)
    except DecodeError:
        raise InvalidArgument("an entry is not a serialized ChangeEntry") from None
    return entry


def parse_entry(data: bytes, *, origin: str) -> Change:
    """The change in `data`, validated; InvalidArgument says what is wrong with it."""
    entry = decode_entry(data)
    which = entry.WhichOneof("change")
    changed_at = _moment(entry.changed_at)
    try:
        if which == "media":
            return _media(entry.seq, changed_at, entry.media, origin)
        if which == "retraction":
            media_id = model.check_id("media id", entry.retraction.media_id)
            return ReplicatedRetraction(entry.seq, changed_at, media_id)
        if which == "series":
            return _series(entry.seq, changed_at, entry.series, origin)
        if which == "key_revocation":
            revocation = entry.key_revocation
            return RevokedKey(entry.seq, revocation.key_id, revocation.revoked_from_seq)
        if which == "flag_state":
            return _flag_state(entry.seq, changed_at, entry.flag_state)
        if which == "key_rotation":
            rotation = entry.key_rotation
            return RotatedKey(
                entry.seq,
                rotation.key_id,
                bytes(rotation.public_key),
                rotation.signed_by_key_id,
                bytes(rotation.signature),
            )
    except InvalidArgument as error:
        raise error.within(f"entry {entry.seq}") from None
    raise InvalidArgument(f"entry {entry.seq} carries no change")


def _flag_state(
    seq: int, changed_at: datetime, state: federation_pb2.FlagState
) -> ReplicatedFlagState:
    flag_id = check_flag_id(state.flag_id)
    if int(state.state) not in FLAG_STATES:
        raise InvalidArgument(f"flag {flag_id}: state {int(state.state)} is not a flag state")
    return ReplicatedFlagState(seq, changed_at, flag_id, int(state.state))


def _media(seq: int, changed_at: datetime, media: common_pb2.Media, origin: str) -> ReplicatedMedia:
    if media.origin != origin:
        raise InvalidArgument("a media record names another origin than the batch")
    valid = _canonical_media(seq, changed_at, media)
    if valid is not None:
        return valid
    record = _checked_media(seq, changed_at, media)
    _check_limits(record)
    return record


def _check_limits(record: ReplicatedMedia) -> None:
    """The per-record limits the origin's submissions are held to (services.registry.contract):
    one signal per algorithm (PDQ up to 8), 16 in all, 16 series."""
    problems = signal_set_problems(record.signals)
    if len(record.series_ids) > MAX_SERIES_PER_MEDIA:
        problems.append(
            f"{len(record.series_ids)} series; at most {MAX_SERIES_PER_MEDIA} per media"
        )
    if problems:
        raise InvalidArgument(f"media {record.media_id!r}: {'; '.join(problems)}")


# What a valid record holds, for `_canonical_media`'s lookups: per algorithm number its spec
# and how many signals of it a media may carry.
_SPECS: dict[int, tuple[AlgorithmSpec, int]] = {
    int(a): (spec, per_algorithm_limit(a)) for a, spec in ALGORITHMS.items()
}
_MEDIA_TYPES = {0: model.MediaType.IMAGE} | {int(t): t for t in model.MediaType}
_CATEGORIES = {
    (int(scheme), code): model.Category(scheme, code)
    for scheme, codes in model.CATEGORY_CODES.items()
    for code in codes
}


def _canonical_media(
    seq: int, changed_at: datetime, media: common_pb2.Media
) -> ReplicatedMedia | None:
    """The record if it is valid and canonical as it stands (as the origin writes it: signals
    distinct and in (algorithm, value) order, within the limits; series ids distinct and within
    theirs), else None: checked without collecting problems, so the common case is cheap.
    Anything else (bad input, or valid input in another form) goes to `_checked_media`, which
    accepts exactly what it always accepted and names every problem."""
    media_type = _MEDIA_TYPES.get(media.media_type)
    has_category = media.HasField("category")
    category = (
        _CATEGORIES.get((media.category.scheme, media.category.code)) if has_category else None
    )
    series_ids = tuple(media.series_ids)
    if (
        media_type is None
        or (has_category and category is None)
        or not model.ID_PATTERN.fullmatch(media.media_id)
        or not 1 <= len(media.signals) <= MAX_SIGNALS_PER_MEDIA
        or len(series_ids) > MAX_SERIES_PER_MEDIA
        or len(set(series_ids)) != len(series_ids)
        or not all(model.ID_PATTERN.fullmatch(series_id) for series_id in series_ids)
    ):
        return None
    signals: list[SignalValue] = []
    previous: tuple[int, bytes] = (-1, b"")
    of_algorithm = 0
    for message in media.signals:
        algorithm = message.algorithm
        known = _SPECS.get(algorithm)
        if known is None:
            return None
        spec, limit = known
        text = message.value
        if len(text) != 2 * spec.byte_length:
            return None
        try:
            value = bytes.fromhex(text)
        except ValueError:
            return None
        # bytes.fromhex skips blanks between bytes: the length check on the result refuses them.
        if len(value) != spec.byte_length or (algorithm, value) <= previous:
            return None
        of_algorithm = of_algorithm + 1 if algorithm == previous[0] else 1
        if of_algorithm > limit:
            return None
        quality = None
        if message.HasField("quality"):
            quality = message.quality
            if not spec.perceptual or not 0 <= quality <= 100:
                return None
        signals.append(SignalValue(spec.algorithm, value, quality))
        previous = (algorithm, value)
    return ReplicatedMedia(
        seq=seq,
        changed_at=changed_at,
        media_id=media.media_id,
        signals=tuple(signals),
        media_type=media_type,
        category=category,
        flags=convert.flags_from_proto(media.flags),
        series_ids=series_ids,
        first_seen=_moment(media.first_seen),
    )


def _checked_media(seq: int, changed_at: datetime, media: common_pb2.Media) -> ReplicatedMedia:
    """The record, validated field by field; InvalidArgument names every problem."""
    problems = convert.Problems()
    problems.check("media_id", partial(model.check_id, "media id", media.media_id))
    if not media.signals or len(media.signals) > MAX_SIGNALS_PER_MEDIA:
        problems.add("signals", f"{len(media.signals)} signals; 1 to 16 are allowed")
    signals: list[SignalValue] = []
    for i, message in enumerate(media.signals):
        signal = problems.check(f"signals[{i}]", partial(convert.signal_from_proto, message))
        if signal is not None:
            signals.append(signal)
    try:
        media_type = model.MediaType(media.media_type or model.MediaType.IMAGE)
    except ValueError:
        problems.add("media_type", f"unknown media type number {media.media_type}")
        media_type = model.MediaType.IMAGE
    category = None
    if media.HasField("category"):
        category = problems.check("category", partial(convert.category_from_proto, media.category))
    for i, series_id in enumerate(media.series_ids):
        problems.check(f"series_ids[{i}]", partial(model.check_id, "series id", series_id))
    problems.raise_if_any()
    return _replicated(seq, changed_at, media, signals, media_type, category)


def _replicated(
    seq: int,
    changed_at: datetime,
    media: common_pb2.Media,
    signals: list[SignalValue],
    media_type: model.MediaType,
    category: model.Category | None,
) -> ReplicatedMedia:
    return ReplicatedMedia(
        seq=seq,
        changed_at=changed_at,
        media_id=media.media_id,
        signals=distinct_signals(signals),
        media_type=media_type,
        category=category,
        flags=convert.flags_from_proto(media.flags),
        series_ids=tuple(dict.fromkeys(media.series_ids)),
        first_seen=_moment(media.first_seen),
    )


def _series(
    seq: int, changed_at: datetime, series: common_pb2.Series, origin: str
) -> ReplicatedSeries:
    if series.origin != origin:
        raise InvalidArgument("a series names another origin than the batch")
    model.check_id("series id", series.series_id)
    model.check_text("series name", series.name)
    victims: list[model.VictimRecord] = []
    for victim in series.victims:
        model.check_id("victim id", victim.victim_id)
        model.check_text("responsible desk", victim.responsible_desk)
        victims.append(
            model.VictimRecord(
                victim_id=victim.victim_id,
                status=convert.status_from_proto(victim.status),
                responsible_desk=victim.responsible_desk,
                updated_at=_moment(victim.updated_at),
            )
        )
    if len({v.victim_id for v in victims}) != len(victims):
        raise InvalidArgument("a series lists a victim twice")
    if len(victims) > MAX_VICTIMS_PER_SERIES:
        raise InvalidArgument(
            f"series {series.series_id!r}: {len(victims)} victims; "
            f"at most {MAX_VICTIMS_PER_SERIES} per series"
        )
    return ReplicatedSeries(
        seq=seq,
        changed_at=changed_at,
        series_id=series.series_id,
        name=series.name,
        victims=tuple(victims),
        updated_at=_moment(series.updated_at),
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _moment(stamp: Timestamp) -> datetime:
    """An aware datetime; an unset or out-of-range stamp becomes the epoch rather than failing
    a whole batch over a display field."""
    return _moment_of(stamp.seconds, stamp.nanos)


@lru_cache(maxsize=4096)
def _moment_of(seconds: int, nanos: int) -> datetime:
    """Entries written together share their moments: each is converted once."""
    try:
        return Timestamp(seconds=seconds, nanos=nanos).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        return _EPOCH
