"""A node's sharing policy for one peer applied at the source, before anything is signed.

Two things leave a node for a peer: change-log entries (Federation.Pull) and lookup matches
(Federation.PeerLookup). Both go through the same rules:

- media of a category the policy does not allow (`uncategorised` for none), or in an embargoed
  series, are withheld whole;
- signals of algorithms the policy does not allow are stripped; a media left with no signal is
  withheld;
- without victim-status disclosure, series travel without their victims and media without the
  victim-identified flag; without desk disclosure, victims travel without the responsible desk;
- embargoed series are withheld whole;
- no policy at all for a peer means nothing is shared with it (but key rotations);
- a flag state change goes only to the flag's other agency (named beside the entry).

A retraction is withheld when the media it retracts, as it stood, would have been: its media id
may itself be a hash (`sha256:<hex>`) the peer was never allowed to learn. A media change the
policy withholds becomes a retraction when the media's earlier state was allowed, so a record
moved into a withheld category or an embargoed series is withdrawn from the peer. Key rotations
always pass: peers need them to verify what follows. An entry the policy leaves untouched is
returned as the very bytes stored, so what was written is what is signed.

Pure: no SQL, no gRPC.
"""

from __future__ import annotations

import logging

from google.protobuf.message import DecodeError

from hashex.v1 import common_pb2, federation_pb2, registry_pb2
from services.core.algorithms import ALGORITHMS, Algorithm
from services.core.changelog.store import EntryKind, LogRow
from services.core.errors import InvalidArgument
from services.sync.entries import decode_entry
from services.sync.policy import SharingPolicy

_log = logging.getLogger(__name__)

_ALGORITHM_NAMES = {int(a): ALGORITHMS[a].name for a in Algorithm}


def filter_log_row(row: LogRow, policy: SharingPolicy | None, *, recipient: str) -> bytes | None:
    """The entry bytes to send for `row` to peer `recipient`, or None when withheld. An entry
    this node cannot read back to filter (written by a bug of an older release) is withheld and
    logged, rather than failing every pull at it: nothing unfiltered leaves, the rest goes on."""
    try:
        return _filter_log_row(row, policy, recipient)
    except (InvalidArgument, DecodeError):
        _log.error("entry %d of this node's change log cannot be read: withheld", row.seq)
        return None


def _filter_log_row(row: LogRow, policy: SharingPolicy | None, recipient: str) -> bytes | None:
    if row.kind in (EntryKind.KEY_ROTATION, EntryKind.KEY_REVOCATION):
        return row.entry  # even without a policy: they decide which batches verify
    if policy is None:
        return None
    if row.kind == EntryKind.FLAG_STATE:
        # Told only to the flag's other agency, which the writer stored beside the entry.
        return row.entry if row.media_before == recipient.encode() else None
    if row.kind == EntryKind.RETRACTION:
        if row.media_before is None:
            return row.entry
        before = common_pb2.Media()
        before.ParseFromString(row.media_before)
        return row.entry if filter_media(before, policy) is not None else None
    if row.kind == EntryKind.MEDIA and _passes_media_untouched(policy):
        return row.entry
    if row.kind == EntryKind.SERIES and _passes_series_untouched(policy):
        return row.entry
    filtered = filter_entry(row.entry, policy)
    if filtered is None and row.kind == EntryKind.MEDIA and row.media_before is not None:
        return _withdrawal(row, policy)
    return filtered


def _withdrawal(row: LogRow, policy: SharingPolicy) -> bytes | None:
    """A media whose new state may not leave for the peer but whose earlier state did (moved
    into a withheld category or an embargoed series): a retraction withdraws the peer's copy.
    It tells the peer nothing new, as the peer was allowed the earlier state and its media id."""
    before = common_pb2.Media()
    before.ParseFromString(row.media_before or b"")
    if filter_media(before, policy) is None:
        return None
    entry = decode_entry(row.entry)
    withdrawal = federation_pb2.ChangeEntry(
        seq=entry.seq,
        changed_at=entry.changed_at,
        retraction=federation_pb2.MediaRetraction(media_id=entry.media.media_id),
    )
    return withdrawal.SerializeToString()


def filter_entry(data: bytes, policy: SharingPolicy) -> bytes | None:
    """A media or series entry filtered: the same bytes when nothing changes, new bytes when
    something was stripped, None when withheld."""
    entry = decode_entry(data)
    which = entry.WhichOneof("change")
    if which == "media":
        media = filter_media(entry.media, policy)
        if media is None:
            return None
        if media is entry.media:
            return data
        entry.media.CopyFrom(media)
        return entry.SerializeToString()
    if which == "series":
        series = filter_series(entry.series, policy)
        if series is None:
            return None
        if series is entry.series:
            return data
        entry.series.CopyFrom(series)
        return entry.SerializeToString()
    return data


def filter_media(media: common_pb2.Media, policy: SharingPolicy) -> common_pb2.Media | None:
    """`media` itself when the policy leaves it untouched, a stripped copy, or None."""
    if any(s in policy.embargoed_series for s in media.series_ids):
        return None
    if media.HasField("category"):
        allowed = policy.allows_category(media.category.scheme, media.category.code)
    else:
        allowed = policy.allows_category(0, "")
    if not allowed:
        return None
    kept = [s for s in media.signals if _allows_signal(policy, s)]
    if not kept:
        return None
    hide_flag = not policy.disclose_victim_status and media.flags.victim_identified
    if len(kept) == len(media.signals) and not hide_flag:
        return media
    stripped = common_pb2.Media()
    stripped.CopyFrom(media)
    del stripped.signals[:]
    stripped.signals.extend(kept)
    if hide_flag:
        stripped.flags.victim_identified = False
    return stripped


def filter_series(series: common_pb2.Series, policy: SharingPolicy) -> common_pb2.Series | None:
    """`series` itself when untouched, a redacted copy, or None (embargoed)."""
    if series.series_id in policy.embargoed_series:
        return None
    if not series.victims:
        return series
    hide_victims = not policy.disclose_victim_status
    hide_desk = not policy.disclose_desk and any(v.responsible_desk for v in series.victims)
    if not hide_victims and not hide_desk:
        return series
    redacted = common_pb2.Series()
    redacted.CopyFrom(series)
    if hide_victims:
        del redacted.victims[:]
    else:
        for victim in redacted.victims:
            victim.responsible_desk = ""
    return redacted


def filter_match(match: registry_pb2.Match, policy: SharingPolicy) -> registry_pb2.Match | None:
    """A lookup match as the peer may see it, or None: the media filtered as an entry would be,
    and a match on a signal the peer may not see is no match at all."""
    if not _allows_signal(policy, match.matched_signal):
        return None
    media = filter_media(match.media, policy)
    if media is None:
        return None
    series = [filter_series(s, policy) for s in match.series]
    if media is match.media and all(a is b for a, b in zip(series, match.series, strict=True)):
        return match
    filtered = registry_pb2.Match()
    filtered.CopyFrom(match)
    filtered.media.CopyFrom(media)
    del filtered.series[:]
    filtered.series.extend(s for s in series if s is not None)
    return filtered


def filter_lookup(
    response: registry_pb2.LookupResponse, policy: SharingPolicy | None, *, origin: str
) -> registry_pb2.LookupResponse:
    """A lookup answer for a peer: only matches of `origin` (this node's own records; it never
    speaks for others), each filtered; without a policy, no match at all."""
    answer = registry_pb2.LookupResponse()
    for result in response.results:
        kept = []
        if policy is not None:
            for match in result.matches:
                if match.media.origin != origin:
                    continue
                filtered = filter_match(match, policy)
                if filtered is not None:
                    kept.append(filtered)
        answer.results.append(
            registry_pb2.LookupResult(
                index=result.index,
                signal=result.signal,
                matches=kept,
                low_quality=result.low_quality,
                truncated=result.truncated and bool(kept),
            )
        )
    return answer


def _allows_signal(policy: SharingPolicy, signal: common_pb2.Signal) -> bool:
    return policy.allows_algorithm(_ALGORITHM_NAMES.get(signal.algorithm, "?"))


def _passes_media_untouched(policy: SharingPolicy) -> bool:
    """True when no media entry can be changed by `policy` (saves parsing every entry)."""
    return (
        policy.categories is None
        and policy.algorithms is None
        and not policy.embargoed_series
        and policy.disclose_victim_status
    )


def _passes_series_untouched(policy: SharingPolicy) -> bool:
    return not policy.embargoed_series and policy.disclose_victim_status and policy.disclose_desk
