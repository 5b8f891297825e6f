"""Protobuf ⇄ domain conversion for the Registry service, with validation.

Every problem is collected with its field path (`media[3].signals[0].value: …`) so that one reply
tells the caller everything to fix; a request with any problem is rejected whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from hashex.v1 import common_pb2, registry_pb2
from services.core.algorithms import (
    ALGORITHMS,
    SignalValue,
    derived_media_id,
    distinct_signals,
    spec_for_number,
)
from services.core.errors import FieldProblem, InvalidArgument
from services.registry import model
from services.registry.contract import (
    DEFAULT_MAX_MATCHES,
    MAX_LOOKUP_SIGNALS,
    MAX_MATCHES_PER_SIGNAL,
    MAX_MEDIA_PER_BATCH,
    MAX_PDQ_DISTANCE,
    MAX_RESPONSE_BYTES,
    MAX_RETRACT_IDS,
    MAX_SERIES_PER_MEDIA,
    MAX_SIGNALS_PER_MEDIA,
    MAX_UPDATE_IDS,
    per_algorithm_limit,
    signal_set_problems,
)

T = TypeVar("T")


class Problems:
    """Collects field problems while converting one request."""

    def __init__(self) -> None:
        self.items: list[FieldProblem] = []

    def check(self, field: str, convert: Callable[[], T]) -> T | None:
        """Run `convert`; on InvalidArgument record its problems under `field`, return None."""
        try:
            return convert()
        except InvalidArgument as error:
            self.items.extend(error.within(field).problems)
            return None

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldProblem(field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def signal_from_proto(message: common_pb2.Signal) -> SignalValue:
    try:
        spec = spec_for_number(message.algorithm)
    except InvalidArgument as error:
        raise error.within("algorithm") from None
    try:
        value = spec.parse_hex(message.value)
    except InvalidArgument as error:
        raise error.within("value") from None
    quality = message.quality if message.HasField("quality") else None
    try:
        spec.check_quality(quality)
    except InvalidArgument as error:
        raise error.within("quality") from None
    return SignalValue(spec.algorithm, value, quality)


def signal_to_proto(signal: SignalValue) -> common_pb2.Signal:
    message = common_pb2.Signal(
        algorithm=common_pb2.HashAlgorithm.ValueType(signal.algorithm), value=signal.value.hex()
    )
    if signal.quality is not None:
        message.quality = signal.quality
    return message


def _signals(
    problems: Problems, field: str, messages: Sequence[common_pb2.Signal]
) -> list[SignalValue]:
    signals: list[SignalValue] = []
    for i, message in enumerate(messages):
        signal = problems.check(f"{field}[{i}]", partial(signal_from_proto, message))
        if signal is not None:
            signals.append(signal)
    return signals


def _check_signal_set(problems: Problems, field: str, signals: list[SignalValue]) -> None:
    for problem in signal_set_problems(distinct_signals(signals)):
        problems.add(field, problem)


def submission_from_proto(message: registry_pb2.MediaSubmission) -> model.MediaSubmission:
    """One media of a SubmitMediaRequest, validated; InvalidArgument with relative field paths."""
    fast = _valid_submission(message)
    return fast if fast is not None else checked_submission(message)


def checked_submission(message: registry_pb2.MediaSubmission) -> model.MediaSubmission:
    """`submission_from_proto` collecting every problem (what a media that is not valid as it
    stands goes through)."""
    problems = Problems()
    if not message.signals:
        problems.add("signals", "at least one signal is required")
    elif len(message.signals) > MAX_SIGNALS_PER_MEDIA:
        problems.add("signals", f"{len(message.signals)} signals; the limit is 16")
    signals = _signals(problems, "signals", message.signals[:MAX_SIGNALS_PER_MEDIA])
    _check_signal_set(problems, "signals", signals)
    media_id = message.media_id or (derived_media_id(signals) if signals else None)
    if message.media_id:
        problems.check("media_id", lambda: model.check_id("media id", message.media_id))
    elif signals and media_id is None:
        problems.add("media_id", "required when the media has no cryptographic hash")
    media_type = _media_type(problems, message.media_type)
    category = None
    if message.HasField("category"):
        category = problems.check("category", lambda: category_from_proto(message.category))
    series_ids = tuple(message.series_ids)
    if len(set(series_ids)) > MAX_SERIES_PER_MEDIA:
        problems.add("series_ids", f"{len(set(series_ids))} series; at most {MAX_SERIES_PER_MEDIA}")
    for i, series_id in enumerate(series_ids[:MAX_SERIES_PER_MEDIA]):
        problems.check(f"series_ids[{i}]", partial(model.check_id, "series id", series_id))
    case = message.case_data
    problems.check("case_data.case_reference", lambda: _text("case reference", case.case_reference))
    problems.check(
        "case_data.exhibit_reference", lambda: _text("exhibit reference", case.exhibit_reference)
    )
    problems.check(
        "case_data.file_path",
        lambda: model.check_text("file path", case.file_path, model.MAX_PATH_CHARS),
    )
    problems.raise_if_any()
    assert media_id is not None
    return model.MediaSubmission(
        media_id=media_id,
        signals=distinct_signals(signals),
        media_type=media_type,
        category=category,
        flags=flags_from_proto(message.flags),
        series_ids=tuple(dict.fromkeys(series_ids)),
        case_data=model.CaseData(case.case_reference, case.exhibit_reference, case.file_path),
    )


# For `_valid_submission`: per algorithm number its spec and how many a media may carry; the
# valid categories in their canonical case; the media types.
_SIGNAL_SPECS = {int(a): (spec, per_algorithm_limit(a)) for a, spec in ALGORITHMS.items()}
_VALID_CATEGORIES = {
    (int(scheme), code): model.Category(scheme, code)
    for scheme, codes in model.CATEGORY_CODES.items()
    for code in codes
}
_SUBMITTED_TYPES = {0: None} | {int(t): t for t in model.MediaType}


def _valid_submission(message: registry_pb2.MediaSubmission) -> model.MediaSubmission | None:
    """The submission when it is valid as it stands, checked without collecting problems (a
    bulk import sends a million of these); None when anything is off, and then
    `submission_from_proto` finds and names every problem."""
    count = len(message.signals)
    if not 1 <= count <= MAX_SIGNALS_PER_MEDIA or message.media_type not in _SUBMITTED_TYPES:
        return None
    given: list[SignalValue] = []
    for item in message.signals:
        known = _SIGNAL_SPECS.get(item.algorithm)
        if known is None or len(item.value) != 2 * known[0].byte_length:
            return None
        try:
            value = bytes.fromhex(item.value)
        except ValueError:
            return None
        spec = known[0]
        # bytes.fromhex skips blanks between bytes: the length of the result refuses them.
        if len(value) != spec.byte_length:
            return None
        quality = None
        if item.HasField("quality"):
            quality = item.quality
            if not spec.perceptual or quality > 100:
                return None
        given.append(SignalValue(spec.algorithm, value, quality))
    signals = distinct_signals(given)
    per_algorithm: dict[int, int] = {}
    for signal in signals:
        per_algorithm[signal.algorithm] = per_algorithm.get(signal.algorithm, 0) + 1
        if per_algorithm[signal.algorithm] > _SIGNAL_SPECS[signal.algorithm][1]:
            return None
    media_id = message.media_id or derived_media_id(list(signals))
    if media_id is None or (message.media_id and not model.ID_PATTERN.fullmatch(media_id)):
        return None
    category = None
    if message.HasField("category"):
        category = _VALID_CATEGORIES.get((message.category.scheme, message.category.code))
        if category is None:
            return None
    series_ids: tuple[str, ...] = ()
    if message.series_ids:
        series_ids = tuple(dict.fromkeys(message.series_ids))
        if len(series_ids) > MAX_SERIES_PER_MEDIA or not all(
            model.ID_PATTERN.fullmatch(s) for s in series_ids
        ):
            return None
    case = message.case_data
    if message.HasField("case_data"):
        try:
            for kind, text, limit in (
                ("case reference", case.case_reference, model.MAX_NAME_CHARS),
                ("exhibit reference", case.exhibit_reference, model.MAX_NAME_CHARS),
                ("file path", case.file_path, model.MAX_PATH_CHARS),
            ):
                if text:
                    model.check_text(kind, text, limit)
        except InvalidArgument:
            return None
    return model.MediaSubmission(
        media_id=media_id,
        signals=signals,
        media_type=_SUBMITTED_TYPES[message.media_type],
        category=category,
        flags=flags_from_proto(message.flags),
        series_ids=series_ids,
        case_data=model.CaseData(case.case_reference, case.exhibit_reference, case.file_path),
    )


def flags_from_proto(flags: common_pb2.MediaFlags) -> model.MediaFlags:
    return model.MediaFlags(
        flags.victim_identified, flags.offender_identified, flags.distributed, flags.self_generated
    )


def _text(kind: str, value: str) -> str:
    return model.check_text(kind, value)


def _media_type(problems: Problems, number: int) -> model.MediaType | None:
    """The type given, or None when unspecified (or unknown: then a problem is recorded)."""
    if number == 0:
        return None
    try:
        return model.MediaType(number)
    except ValueError:
        problems.add("media_type", f"unknown media type number {number}")
        return None


def category_from_proto(message: common_pb2.Category) -> model.Category:
    if message.scheme == 0:
        raise InvalidArgument(FieldProblem("scheme", "scheme is required"))
    try:
        scheme = model.CategoryScheme(message.scheme)
    except ValueError:
        raise InvalidArgument(
            FieldProblem("scheme", f"unknown scheme number {message.scheme}")
        ) from None
    return model.Category.parse(scheme, message.code)


def _check_batch_size(field: str, count: int, *, limit: int, noun: str, empty: str) -> None:
    """Refuse an empty or oversized batch before looking at any item of it."""
    if count == 0:
        raise InvalidArgument(FieldProblem(field, empty))
    if count > limit:
        raise InvalidArgument(
            FieldProblem(field, f"the batch has {count} {noun}; the limit is {limit}")
        )


def submit_batch_from_proto(
    request: registry_pb2.SubmitMediaRequest,
) -> list[model.MediaSubmission]:
    """A whole batch, validated; InvalidArgument names every offending `media[i]…` item."""
    _check_batch_size(
        "media",
        len(request.media),
        limit=MAX_MEDIA_PER_BATCH,
        noun="media",
        empty="the batch is empty",
    )
    problems = Problems()
    batch: list[model.MediaSubmission] = []
    seen: dict[str, int] = {}
    for i, message in enumerate(request.media):
        media = problems.check(f"media[{i}]", partial(submission_from_proto, message))
        if media is None:
            continue
        if media.media_id in seen:
            problems.add(
                f"media[{i}].media_id",
                f"media id {media.media_id!r} also at media[{seen[media.media_id]}]",
            )
        seen[media.media_id] = i
        batch.append(media)
    problems.raise_if_any()
    return batch


def lookup_from_proto(
    request: registry_pb2.LookupRequest, *, default_max_distance: int
) -> tuple[list[SignalValue], int, int]:
    """The signals to look up, the PDQ distance and the per-signal match limit."""
    _check_batch_size(
        "signals",
        len(request.signals),
        limit=MAX_LOOKUP_SIGNALS,
        noun="signals",
        empty="at least one signal is required",
    )
    problems = Problems()
    signals = _signals(problems, "signals", request.signals)
    distance = default_max_distance
    if request.HasField("pdq_max_distance"):
        distance = request.pdq_max_distance
        if distance > MAX_PDQ_DISTANCE:
            problems.add("pdq_max_distance", f"{distance} is above the limit of 64")
    if request.max_matches_per_signal > MAX_MATCHES_PER_SIGNAL:
        problems.add(
            "max_matches_per_signal",
            f"{request.max_matches_per_signal} is above the limit of {MAX_MATCHES_PER_SIGNAL}",
        )
    problems.raise_if_any()
    return signals, distance, request.max_matches_per_signal or DEFAULT_MAX_MATCHES


def retract_from_proto(request: registry_pb2.RetractMediaRequest) -> list[str]:
    _check_batch_size(
        "media_ids",
        len(request.media_ids),
        limit=MAX_RETRACT_IDS,
        noun="ids",
        empty="at least one media id is required",
    )
    problems = Problems()
    for i, media_id in enumerate(request.media_ids):
        problems.check(f"media_ids[{i}]", partial(model.check_id, "media id", media_id))
    problems.raise_if_any()
    return list(dict.fromkeys(request.media_ids))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


MAX_EXPORT_PAGE = 1000


def export_from_proto(request: registry_pb2.ExportMediaRequest) -> tuple[str, int]:
    """Where an export starts and its page size (registry.proto, ExportMediaRequest)."""
    problems = Problems()
    if request.after_media_id:
        problems.check("after_media_id", lambda: model.check_id("media id", request.after_media_id))
    if request.page_size > MAX_EXPORT_PAGE:
        problems.add("page_size", f"{request.page_size}; at most {MAX_EXPORT_PAGE}")
    problems.raise_if_any()
    return request.after_media_id, request.page_size or MAX_EXPORT_PAGE


def timestamp(moment: datetime) -> Timestamp:
    """An aware datetime as a Timestamp, in integer arithmetic (`FromDatetime` cost a tenth of
    converting a lookup answer)."""
    delta = moment - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)


def media_to_proto(media: model.MediaRecord) -> common_pb2.Media:
    message = common_pb2.Media(
        origin=media.origin,
        media_id=media.media_id,
        signals=[signal_to_proto(s) for s in media.signals],
        media_type=common_pb2.MediaType.ValueType(media.media_type),
        flags=common_pb2.MediaFlags(
            victim_identified=media.flags.victim_identified,
            offender_identified=media.flags.offender_identified,
            distributed=media.flags.distributed,
            self_generated=media.flags.self_generated,
        ),
        series_ids=list(media.series_ids),
        first_seen=timestamp(media.first_seen),
    )
    if media.category is not None:
        message.category.CopyFrom(
            common_pb2.Category(
                scheme=common_pb2.CategoryScheme.ValueType(media.category.scheme),
                code=media.category.code,
            )
        )
    return message


def victim_to_proto(victim: model.VictimRecord) -> common_pb2.Victim:
    return common_pb2.Victim(
        victim_id=victim.victim_id,
        status=common_pb2.IdentificationStatus.ValueType(victim.status),
        responsible_desk=victim.responsible_desk,
        updated_at=timestamp(victim.updated_at),
    )


def series_to_proto(series: model.SeriesRecord) -> common_pb2.Series:
    return common_pb2.Series(
        origin=series.origin,
        series_id=series.series_id,
        name=series.name,
        victims=[victim_to_proto(v) for v in series.victims],
        media_count=series.media_count,
        updated_at=timestamp(series.updated_at),
    )


def lookup_response_to_proto(
    results: Sequence[model.LookupResult], *, max_bytes: int = MAX_RESPONSE_BYTES
) -> registry_pb2.LookupResponse:
    """The answer, every result present, its matches cut once they reach `max_bytes` (each
    such result says so). A media matched by several results is converted once."""
    response = registry_pb2.LookupResponse()
    media: dict[int, common_pb2.Media] = {}
    series: dict[tuple[str, str], common_pb2.Series] = {}
    spent = 0
    for result in results:
        item = response.results.add(
            index=result.index,
            signal=signal_to_proto(result.signal),
            low_quality=result.low_quality,
            truncated=result.truncated,
        )
        for m in result.matches:
            match = registry_pb2.Match(
                kind=registry_pb2.MATCH_KIND_EXACT if m.exact else registry_pb2.MATCH_KIND_NEAR,
                distance=m.distance,
                matched_signal=signal_to_proto(m.matched_signal),
                media=_cached(media, m.media.row_id, partial(media_to_proto, m.media)),
                series=[
                    _cached(series, (s.origin, s.series_id), partial(series_to_proto, s))
                    for s in m.series
                ],
            )
            size = match.ByteSize()
            if spent + size > max_bytes:
                item.truncated = item.response_full = True
                break
            spent += size
            item.matches.append(match)
    return response


K = TypeVar("K")
M = TypeVar("M")


def _cached(cache: dict[K, M], key: K, make: Callable[[], M]) -> M:
    found = cache.get(key)
    if found is None:
        found = cache[key] = make()
    return found


def status_from_proto(number: int) -> model.IdentificationStatus:
    if number == 0:
        raise InvalidArgument(FieldProblem("status", "status is required"))
    try:
        return model.IdentificationStatus(number)
    except ValueError:
        raise InvalidArgument(FieldProblem("status", f"unknown status number {number}")) from None


FLAG_PATHS = {
    "flags.victim_identified": model.MediaFlags(victim_identified=True).to_bits(),
    "flags.offender_identified": model.MediaFlags(offender_identified=True).to_bits(),
    "flags.distributed": model.MediaFlags(distributed=True).to_bits(),
    "flags.self_generated": model.MediaFlags(self_generated=True).to_bits(),
}
MEDIA_UPDATE_PATHS = ("category", "media_type", "flags", *FLAG_PATHS)


def media_change_from_proto(
    request: registry_pb2.UpdateMediaRequest,
) -> tuple[list[str], model.MediaChange]:
    """The media ids and the change an UpdateMedia request asks for; InvalidArgument names
    every problem, including a request that changes nothing."""
    _check_batch_size(
        "media_ids",
        len(request.media_ids),
        limit=MAX_UPDATE_IDS,
        noun="media ids",
        empty="at least one media id is required",
    )
    problems = Problems()
    media_ids = _distinct_ids(problems, "media_ids", "media id", request.media_ids)
    paths = _mask_paths(problems, request.update_mask, MEDIA_UPDATE_PATHS)
    values = request.values
    change = model.MediaChange(restore=request.restore)
    if "category" in paths:
        category = None
        if values.HasField("category"):
            category = problems.check(
                "values.category", lambda: category_from_proto(values.category)
            )
        change = replace(change, set_category=True, category=category)
    if "media_type" in paths:
        if values.media_type == 0:
            problems.add("values.media_type", "a media type is required with this path")
        change = replace(change, media_type=_media_type(problems, values.media_type))
    bits = flags_from_proto(values.flags).to_bits()
    named = sum(
        (bit for path, bit in FLAG_PATHS.items() if path in paths or "flags" in paths), start=0
    )
    change = replace(change, flags_on=bits & named, flags_off=~bits & named & 0xF)
    if len(request.leave_series_ids) > MAX_SERIES_PER_MEDIA:
        problems.add(
            "leave_series_ids",
            f"{len(request.leave_series_ids)} series ids; at most {MAX_SERIES_PER_MEDIA}",
        )
    leave = _distinct_ids(problems, "leave_series_ids", "series id", request.leave_series_ids)
    change = replace(change, leave_series=tuple(leave))
    if not problems.items and change.is_empty():
        problems.add("update_mask", "the request changes nothing: name a path, series or restore")
    problems.raise_if_any()
    return media_ids, change


def series_name_from_proto(request: registry_pb2.UpsertSeriesRequest) -> str | None:
    """The name to set: None keeps the current one (no mask and an empty name)."""
    problems = Problems()
    paths = _mask_paths(problems, request.update_mask, ("name",))
    problems.check("name", lambda: model.check_text("name", request.name))
    problems.raise_if_any()
    if "name" in paths or request.name:
        return request.name
    return None


def victim_update_from_proto(
    request: registry_pb2.UpdateVictimRequest,
) -> tuple[model.IdentificationStatus | None, str | None]:
    """The status and desk to write; None keeps the field as it is."""
    problems = Problems()
    problems.check(
        "responsible_desk",
        lambda: model.check_text("responsible desk", request.responsible_desk),
    )
    if not request.HasField("update_mask"):  # the form of earlier releases
        status = _status(problems, request.status)
        problems.raise_if_any()
        return status, request.responsible_desk or None
    paths = _mask_paths(problems, request.update_mask, ("status", "responsible_desk"))
    status = None
    if "status" in paths:
        status = _status(problems, request.status)
    if not paths:
        problems.add("update_mask", "name at least one path: status, responsible_desk")
    problems.raise_if_any()
    return status, request.responsible_desk if "responsible_desk" in paths else None


def _status(problems: Problems, number: int) -> model.IdentificationStatus | None:
    try:
        return status_from_proto(number)
    except InvalidArgument as error:  # its problems already name the `status` field
        problems.items.extend(error.problems)
        return None


def _mask_paths(problems: Problems, mask: FieldMask, allowed: Sequence[str]) -> set[str]:
    paths = set()
    for i, path in enumerate(mask.paths):
        if path not in allowed:
            problems.add(
                f"update_mask.paths[{i}]", f"unknown path {path!r}; allowed: {', '.join(allowed)}"
            )
        paths.add(path)
    return paths


def _distinct_ids(problems: Problems, field: str, kind: str, values: Sequence[str]) -> list[str]:
    """Valid ids of `values`, in order and each once (a repeat is a problem)."""
    seen: dict[str, int] = {}
    for i, value in enumerate(values):
        if problems.check(f"{field}[{i}]", partial(model.check_id, kind, value)) is None:
            continue
        if value in seen:
            problems.add(f"{field}[{i}]", f"{kind} {value!r} also at {field}[{seen[value]}]")
        seen.setdefault(value, i)
    return list(seen)


def media_changed_to_proto(outcome: model.MediaChanged) -> registry_pb2.UpdateMediaResponse:
    return registry_pb2.UpdateMediaResponse(
        changed=outcome.changed,
        unchanged=outcome.unchanged,
        media=[media_to_proto(m) for m in outcome.media],
    )
