"""Generated VICS documents for property tests: a model of what a document states, and an odd but
legal JSON text of it (members in any order, `value` first or last, any blanks, a byte order mark,
hex in any case, flags as booleans or strings, nulls, unknown fields, both shapes, every version
and profile), written here by hand so that the text is not the reader's own idea of JSON. The
model keeps the place (line, column) of every Media, so positions are checked too."""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass

from hypothesis import strategies as st

from services.core.algorithms import BY_NAME, SignalValue
from services.registry.model import CATEGORY_CODES, Category, CategoryScheme, MediaFlags

PROFILES = {
    "Default": CategoryScheme.VICS_DEFAULT,
    "US": CategoryScheme.VICS_US,
    "UK": CategoryScheme.VICS_UK,
    "CUSTOM": CategoryScheme.VICS_CUSTOM,
}
BLANKS = ("", " ", "\n", "\r\n", "\t", "\n    ", "  ")
UNKNOWN_MEDIA_FIELDS = ("MediaID", "Tags", "MediaSize", "DateUpdated", "Exifs", "odata.id")
UNKNOWN_HASH_NAMES = ("Whirlpool", "SHA512", "CRC32")
json_scalars = st.none() | st.booleans() | st.integers(-5, 10**6) | st.text(max_size=5)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
series_names = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12).filter(
    str.strip
)


@dataclass(frozen=True)
class MediaModel:
    """What one Media states, and its JSON object (keys in the order to write)."""

    fields: dict[str, object]
    signals: frozenset[SignalValue]
    category: Category | None
    flags: MediaFlags
    series_names: tuple[str, ...]
    file_paths: tuple[str, ...]
    unused_fields: frozenset[str]


@dataclass(frozen=True)
class DocumentModel:
    version: str
    profile: str | None
    shape: str
    scheme: CategoryScheme
    media: tuple[MediaModel, ...]
    unused_root_fields: frozenset[str]
    unused_case_fields: dict[str, int]
    # The JSON text, and the (line, column) of each Media in it.
    text: str
    places: tuple[tuple[int, int], ...]


def _hex(value: bytes, rnd: random.Random) -> str:
    text = value.hex()
    style = rnd.choice(("lower", "upper", "mixed"))
    if style == "upper":
        return text.upper()
    if style == "mixed":
        return "".join(c.upper() if rnd.random() < 0.5 else c for c in text)
    return text


def _boolean(value: bool, rnd: random.Random) -> object:
    """`value` as a JSON boolean or as a string in some case ("False", "TRUE")."""
    if rnd.random() < 0.5:
        return value
    word = "true" if value else "false"
    return rnd.choice((word, word.upper(), word.capitalize()))


@st.composite
def media_models(draw: st.DrawFn, scheme: CategoryScheme, rnd: random.Random) -> MediaModel:
    fields: dict[str, object] = {}
    signals: set[SignalValue] = set()
    unused: set[str] = set()
    for name in ("MD5", "SHA1", "SHA256", "PDQ", "PhotoDNA"):
        if draw(st.booleans()):
            spec = BY_NAME[name.lower()]
            value = draw(st.binary(min_size=spec.byte_length, max_size=spec.byte_length))
            signal = SignalValue(spec.algorithm, value)
            if name == "PhotoDNA":
                text = base64.b64encode(value).decode() if draw(st.booleans()) else value.hex()
            else:
                text = _hex(value, rnd)
            fields[name] = text
            signals.add(signal)
    alternatives: list[object] = []
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            name = draw(st.sampled_from(UNKNOWN_HASH_NAMES))
            alternatives.append({"HashName": name, "HashValue": "00"})
            unused.add(f"AlternativeHashes.{name}")
            continue
        name = draw(st.sampled_from(("md5", "sha1", "sha256", "pdq", "photodna")))
        spec = BY_NAME[name]
        # Sometimes the value a top-level field already gave: one signal all the same.
        same = [s.value for s in signals if s.algorithm == spec.algorithm]
        value = same[0] if same and draw(st.booleans()) else None
        if value is None:
            value = draw(st.binary(min_size=spec.byte_length, max_size=spec.byte_length))
        written = base64.b64encode(value).decode() if name == "photodna" else _hex(value, rnd)
        case = rnd.choice((str.upper, str.lower, str.capitalize))
        alternatives.append({"HashName": case(name), "HashValue": written})
        signals.add(SignalValue(spec.algorithm, value))
    if alternatives or draw(st.booleans()):
        fields["AlternativeHashes"] = alternatives
    if not signals:
        value = draw(st.binary(min_size=16, max_size=16))
        fields["MD5"] = _hex(value, rnd)
        signals.add(SignalValue(BY_NAME["md5"].algorithm, value))

    category = None
    code = draw(st.none() | st.sampled_from(CATEGORY_CODES[scheme]))
    if code is not None:
        category = Category(scheme, code)
        fields["Category"] = rnd.choice((int(code), code, f" {code} "))
    elif draw(st.booleans()):
        fields["Category"] = None

    stated: list[bool] = []
    for name in ("VictimIdentified", "OffenderIdentified", "IsDistributed", "IsPrecategorized"):
        state = draw(st.sampled_from(("missing", "null", "true", "false")))
        stated.append(state == "true")
        if state == "null":
            fields[name] = None
        elif state != "missing":
            fields[name] = _boolean(state == "true", rnd)
    if "IsPrecategorized" in fields:
        unused.add("IsPrecategorized")

    series: tuple[str, ...] = ()
    choice = draw(st.sampled_from(("missing", "null", "empty", "name")))
    if choice == "name":
        series = (draw(series_names),)
        fields["Series"] = series[0]
    elif choice != "missing":
        fields["Series"] = None if choice == "null" else ""

    paths: tuple[str, ...] = ()
    if draw(st.booleans()):
        names = draw(st.lists(st.sampled_from(("a.jpg", "b.png", "c.mp4")), unique=True))
        fields["MediaFiles"] = [{"FilePath": "/evidence/e01", "FileName": n} for n in names]
        paths = tuple(f"/evidence/e01/{n}" for n in names)

    for name in draw(st.lists(st.sampled_from(UNKNOWN_MEDIA_FIELDS), unique=True, max_size=3)):
        fields[name] = draw(json_values)
        unused.add(name)
    order = draw(st.permutations(list(fields)))
    return MediaModel(
        fields={key: fields[key] for key in order},
        signals=frozenset(signals),
        category=category,
        flags=MediaFlags(*stated[:3]),
        series_names=series,
        file_paths=paths,
        unused_fields=frozenset(unused),
    )


@st.composite
def documents(draw: st.DrawFn) -> DocumentModel:
    """A document model with its text (see `Serialiser`)."""
    rnd = draw(st.randoms(use_true_random=False))
    profile = draw(st.none() | st.sampled_from(sorted(PROFILES)))
    version = "2.0" if profile is not None else f"1.{draw(st.integers(0, 9))}"
    scheme = CategoryScheme.VICS_LEGACY if profile is None else PROFILES[profile]
    shape = draw(st.sampled_from(("media", "cases")))
    media = draw(st.lists(media_models(scheme, rnd), max_size=5))
    text = Serialiser(rnd, draw, version, profile, shape)
    text.document(media)
    return DocumentModel(
        version,
        profile,
        shape,
        scheme,
        tuple(media),
        frozenset(text.unused_root_fields),
        text.unused_case_fields,
        text.text(),
        text.places(),
    )


class Serialiser:
    """Writes a document's text, choosing the odd-but-legal form of each part as it goes, and
    notes where each Media starts and which unused members it wrote."""

    def __init__(
        self,
        rnd: random.Random,
        draw: st.DrawFn,
        version: str,
        profile: str | None,
        shape: str,
    ) -> None:
        self.rnd = rnd
        self.draw = draw
        self.version = version
        self.profile = profile
        self.shape = shape
        self.parts: list[str] = []
        self.offsets: list[int] = []
        self.size = 0
        self.unused_root_fields: list[str] = []
        self.unused_case_fields: dict[str, int] = {}

    def text(self) -> str:
        return "".join(self.parts)

    def places(self) -> tuple[tuple[int, int], ...]:
        text = self.text()
        return tuple(
            (text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)) for at in self.offsets
        )

    def document(self, media: list[MediaModel]) -> None:
        shape = "Media" if self.shape == "media" else "Cases"
        if self.profile is None:
            key, url = "odata.metadata", f"http://example.org/DataModels/{self.version}.xml#{shape}"
        else:
            profile = self.rnd.choice((str.upper, str.lower, str))(self.profile)
            base = self.rnd.choice(("http://github.com/VICSDATAMODEL/ProjectVic/", "urn:x/"))
            url = f"{base}DataModels/2.0.xml/{profile}/$metadata#{shape}"
            key = "@odata.context"
        extras = self.draw(
            st.lists(st.sampled_from(("odata.count", "@odata.nextLink")), unique=True)
        )
        self.unused_root_fields = list(extras)
        root_keys = self.draw(st.permutations([key, "value", *extras]))
        self.blank()
        self.emit("{")
        for index, name in enumerate(root_keys):
            self.key(name, first=index == 0)
            if name == key:
                self.scalar(url)
            elif name == "value":
                self.value_array(media)
            else:
                self.any(self.draw(json_values))
        self.blank()
        self.emit("}")
        self.blank()

    def value_array(self, media: list[MediaModel]) -> None:
        if self.shape == "media":
            self.media_array(media)
            return
        cuts = sorted(self.draw(st.lists(st.integers(0, len(media)), max_size=3)))
        groups = [media[a:b] for a, b in zip([0, *cuts], [*cuts, len(media)], strict=True)]
        self.emit("[")
        for index, group in enumerate(groups):
            self.comma(index)
            extras = self.draw(st.lists(st.sampled_from(("CaseNumber", "Contact")), unique=True))
            for name in extras:
                label = f"Case.{name}"
                self.unused_case_fields[label] = self.unused_case_fields.get(label, 0) + 1
            keys = list(extras) if not group and self.draw(st.booleans()) else [*extras, "Media"]
            self.emit("{")
            for position, name in enumerate(self.draw(st.permutations(keys))):
                self.key(name, first=position == 0)
                if name != "Media":
                    self.any(self.draw(json_values))
                elif not group and self.draw(st.booleans()):
                    self.emit("null")
                else:
                    self.media_array(group)
            self.blank()
            self.emit("}")
        self.blank()
        self.emit("]")

    def media_array(self, media: list[MediaModel]) -> None:
        self.emit("[")
        for index, item in enumerate(media):
            self.comma(index)
            self.offsets.append(self.size)
            self.any(item.fields)
        self.blank()
        self.emit("]")

    def any(self, value: object) -> None:
        if isinstance(value, dict):
            self.emit("{")
            for index, (name, inner) in enumerate(value.items()):
                self.key(name, first=index == 0)
                self.any(inner)
            self.blank()
            self.emit("}")
        elif isinstance(value, list):
            self.emit("[")
            for index, inner in enumerate(value):
                self.comma(index)
                self.any(inner)
            self.blank()
            self.emit("]")
        else:
            self.scalar(value)

    def key(self, name: str, *, first: bool) -> None:
        self.comma(0 if first else 1)
        self.scalar(name)
        self.blank()
        self.emit(":")
        self.blank()

    def comma(self, index: int) -> None:
        if index:
            self.blank()
            self.emit(",")
        self.blank()

    def scalar(self, value: object) -> None:
        self.emit(json.dumps(value, ensure_ascii=self.rnd.random() < 0.5))

    def blank(self) -> None:
        self.emit(self.rnd.choice(BLANKS))

    def emit(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
