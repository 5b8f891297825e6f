"""Domain types of the registry: what the store returns and the handlers work with.

Plain frozen dataclasses: no protobuf, no asyncpg. Enumerations use the contract's numbers so that
conversion is a lookup, and the database stores the same numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum

from services.core.algorithms import SignalValue
from services.core.errors import InvalidArgument

ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_NAME_CHARS = 200
MAX_PATH_CHARS = 4096


class MediaType(IntEnum):
    IMAGE = 1
    VIDEO = 2


class CategoryScheme(IntEnum):
    VICS_US = 1
    CAID_UK = 2
    INTERPOL_BASELINE = 3
    VICS_DEFAULT = 4
    VICS_UK = 5
    VICS_LEGACY = 6
    VICS_CUSTOM = 7


# Valid codes per scheme, in canonical case.
CATEGORY_CODES: dict[CategoryScheme, tuple[str, ...]] = {
    CategoryScheme.VICS_US: ("0", "1", "2", "3", "4"),
    CategoryScheme.CAID_UK: ("A", "B", "C"),
    CategoryScheme.INTERPOL_BASELINE: ("yes", "no"),
    CategoryScheme.VICS_DEFAULT: ("0", "1", "2", "3", "4"),
    CategoryScheme.VICS_UK: ("0", "1", "2", "3", "4"),
    CategoryScheme.VICS_LEGACY: ("0", "1", "2", "3", "4", "5"),
    CategoryScheme.VICS_CUSTOM: tuple(str(n) for n in range(100)),
}
SCHEME_NAMES: dict[CategoryScheme, str] = {
    CategoryScheme.VICS_US: "vics-us",
    CategoryScheme.CAID_UK: "caid-uk",
    CategoryScheme.INTERPOL_BASELINE: "interpol-baseline",
    CategoryScheme.VICS_DEFAULT: "vics-default",
    CategoryScheme.VICS_UK: "vics-uk",
    CategoryScheme.VICS_LEGACY: "vics-legacy",
    CategoryScheme.VICS_CUSTOM: "vics-custom",
}


class IdentificationStatus(IntEnum):
    UNIDENTIFIED = 1
    IN_PROGRESS = 2
    IDENTIFIED = 3
    SAFEGUARDED = 4


@dataclass(frozen=True)
class Category:
    scheme: CategoryScheme
    code: str

    @staticmethod
    def parse(scheme: CategoryScheme, code: str) -> Category:
        """The category with `code` in canonical case, or InvalidArgument naming the valid codes."""
        valid = CATEGORY_CODES[scheme]
        for candidate in valid:
            if candidate.lower() == code.strip().lower():
                return Category(scheme, candidate)
        raise InvalidArgument(
            f"{code!r} is not a {SCHEME_NAMES[scheme]} category; valid: {_listed_codes(valid)}"
        )

    @staticmethod
    def parse_text(text: str) -> Category:
        """Parse `SCHEME:CODE` as written on the command line, e.g. `vics-us:1` or `caid-uk:A`."""
        name, sep, code = text.strip().partition(":")
        by_name = {v: k for k, v in SCHEME_NAMES.items()}
        scheme = by_name.get(name.lower())
        if not sep or scheme is None:
            raise InvalidArgument(
                f"category {text!r} must be SCHEME:CODE with SCHEME one of "
                + ", ".join(SCHEME_NAMES.values())
            )
        return Category.parse(scheme, code)

    def text(self) -> str:
        return f"{SCHEME_NAMES[self.scheme]}:{self.code}"


def _listed_codes(codes: tuple[str, ...]) -> str:
    """ "0, 1, 2", or "0 to 99" for a long numbered range."""
    if len(codes) > 8:
        return f"{codes[0]} to {codes[-1]}"
    return ", ".join(codes)


@dataclass(frozen=True)
class MediaFlags:
    victim_identified: bool = False
    offender_identified: bool = False
    distributed: bool = False
    self_generated: bool = False

    def to_bits(self) -> int:
        return (
            int(self.victim_identified)
            | int(self.offender_identified) << 1
            | int(self.distributed) << 2
            | int(self.self_generated) << 3
        )

    @staticmethod
    def from_bits(bits: int) -> MediaFlags:
        return MediaFlags(bool(bits & 1), bool(bits & 2), bool(bits & 4), bool(bits & 8))


@dataclass(frozen=True)
class CaseData:
    """Local-only case data: encrypted at rest, never returned, never federated, never logged."""

    case_reference: str = ""
    exhibit_reference: str = ""
    file_path: str = ""

    def __repr__(self) -> str:  # keeps case data out of any log line or traceback
        return "CaseData(<sealed>)"

    def is_empty(self) -> bool:
        return not (self.case_reference or self.exhibit_reference or self.file_path)


@dataclass(frozen=True)
class MediaSubmission:
    """A validated media to store at this node (origin = this node). Merged into a stored one:
    signals and series are added, `media_type` and `category` set when given (None: not given),
    the flags given true set."""

    media_id: str
    signals: tuple[SignalValue, ...]
    media_type: MediaType | None = None
    category: Category | None = None
    flags: MediaFlags = MediaFlags()
    series_ids: tuple[str, ...] = ()
    case_data: CaseData = field(default_factory=CaseData)


@dataclass(frozen=True)
class MediaRecord:
    """A stored media (of any origin) as lookups report it."""

    row_id: int
    origin: str
    media_id: str
    signals: tuple[SignalValue, ...]
    media_type: MediaType
    category: Category | None
    flags: MediaFlags
    series_ids: tuple[str, ...]
    first_seen: datetime


@dataclass(frozen=True)
class VictimRecord:
    victim_id: str
    status: IdentificationStatus
    responsible_desk: str
    updated_at: datetime


@dataclass(frozen=True)
class SeriesRecord:
    origin: str
    series_id: str
    name: str
    victims: tuple[VictimRecord, ...]
    media_count: int
    updated_at: datetime


@dataclass(frozen=True)
class MediaChange:
    """An explicit change of media of this node (UpdateMedia); what it does not set stays."""

    # When True the category becomes `category`, None clearing it.
    set_category: bool = False
    category: Category | None = None
    media_type: MediaType | None = None
    # Flag bits (MediaFlags.to_bits) to set and to clear.
    flags_on: int = 0
    flags_off: int = 0
    leave_series: tuple[str, ...] = ()
    restore: bool = False

    def is_empty(self) -> bool:
        return not (
            self.set_category
            or self.media_type is not None
            or self.flags_on
            or self.flags_off
            or self.leave_series
            or self.restore
        )


@dataclass(frozen=True)
class MediaChanged:
    """What UpdateMedia did: counts, and every media named as it now stands (in request
    order)."""

    changed: int
    unchanged: int
    media: tuple[MediaRecord, ...]


@dataclass(frozen=True)
class Writer:
    """Who asks for a write: `name` is remembered as the submitter of the media it creates
    (`unit:<name>`, `operator:<name>`); `any_media`: may change media another unit submitted
    (a supervisor, the node's operator)."""

    name: str
    any_media: bool = False


# The node's own operator (its admin socket, and code of the node itself such as tests and
# benchmarks that call the store directly): may change any media of the node.
NODE_OPERATOR = Writer("operator:node", any_media=True)


@dataclass(frozen=True)
class SubmitCounts:
    received: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    retracted: int = 0

    def __add__(self, other: SubmitCounts) -> SubmitCounts:
        return SubmitCounts(
            self.received + other.received,
            self.created + other.created,
            self.updated + other.updated,
            self.unchanged + other.unchanged,
            self.retracted + other.retracted,
        )


@dataclass(frozen=True)
class RetractCounts:
    retracted: int
    # Ids that are not media of this node.
    not_found: int
    # Ids of media of this node already retracted (nothing to do).
    already_retracted: int = 0
    # Row ids of the media retracted, so the near-match index can drop them.
    retracted_row_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class PdqEntry:
    """One PDQ hash in the near-match index: the stored value and its media row."""

    row_id: int
    value: bytes


@dataclass(frozen=True)
class Match:
    exact: bool
    distance: int
    matched_signal: SignalValue
    media: MediaRecord
    series: tuple[SeriesRecord, ...]


@dataclass(frozen=True)
class LookupResult:
    index: int
    signal: SignalValue
    matches: tuple[Match, ...]
    low_quality: bool
    truncated: bool


@dataclass(frozen=True)
class NodeStats:
    node_id: str
    media_count: int
    retracted_count: int
    signal_counts: dict[int, int]
    series_count: int
    victim_counts: dict[IdentificationStatus, int]
    pdq_index_size: int
    schema_version: int
    started_at: datetime


def check_id(kind: str, value: str) -> str:
    """`value` if it is a valid identifier, else InvalidArgument saying what is allowed."""
    if not ID_PATTERN.fullmatch(value):
        shown = value if len(value) <= 32 else value[:32] + "…"
        raise InvalidArgument(
            f"{kind} {shown!r} must be 1-128 characters of letters, digits and . _ : -"
        )
    return value


def check_text(kind: str, value: str, limit: int = MAX_NAME_CHARS) -> str:
    """`value` if it is at most `limit` characters of storable text: PostgreSQL text holds no
    NUL character (and a lone surrogate is no UTF-8)."""
    if len(value) > limit:
        raise InvalidArgument(f"{kind} is {len(value)} characters; the limit is {limit}")
    if "\x00" in value:
        raise InvalidArgument(f"{kind} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{kind} is not valid UTF-8 text") from None
    return value
