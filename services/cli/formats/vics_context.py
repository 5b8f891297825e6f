"""What a VICS document says about itself: its data model version, profile and shape, read from
(and written to) its OData context key.

A VICS 1.x file names its model in `odata.metadata`
(`http://github.com/ICMEC/ProjectVic/DataModels/1.3.xml#Media`); a VICS 2.0 file in
`@odata.context` (`.../DataModels/2.0.xml/US/$metadata#Cases`), whose profile decides what a
category number means. Each profile is its own category scheme, and 1.x files use the legacy
one: a number is never reinterpreted under another profile.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from services.registry.model import CategoryScheme

Shape = Literal["media", "cases"]
SHAPES: tuple[Shape, ...] = ("media", "cases")
KEY_1X = "odata.metadata"
KEY_2X = "@odata.context"
CONTEXT_KEYS = (KEY_2X, KEY_1X)
VERSIONS_WRITTEN = ("1.3", "2.0")
# Canonical spelling of each 2.0 profile, and its scheme.
PROFILES: dict[str, CategoryScheme] = {
    "Default": CategoryScheme.VICS_DEFAULT,
    "US": CategoryScheme.VICS_US,
    "UK": CategoryScheme.VICS_UK,
    "CUSTOM": CategoryScheme.VICS_CUSTOM,
}
_PROFILE_BY_LOWER = {name.lower(): name for name in PROFILES}
# Any URL prefix: producers differ (ICMEC, VICSDATAMODEL, a local mirror).
_MODEL_1X = re.compile(r"(?:^|/)DataModels/1\.([0-9])\.xml#(Media|Cases)\Z", re.IGNORECASE)
_MODEL_2X = re.compile(
    r"(?:^|/)DataModels/2\.0\.xml/([^/]*)/\$metadata#(Media|Cases)\Z", re.IGNORECASE
)
_URL_1X = "http://github.com/ICMEC/ProjectVic/DataModels/{version}.xml#{shape}"
_URL_2X = (
    "http://github.com/VICSDATAMODEL/ProjectVic/DataModels/2.0.xml/{profile}/$metadata#{shape}"
)
_QUOTE_LIMIT = 200


@dataclass(frozen=True)
class VicsContext:
    """The facts of one document: `version` "1.0"-"1.9" or "2.0"; `profile` (2.0 only) one of
    `PROFILES`; `shape` "media" (value holds Media) or "cases" (value holds Cases of Media)."""

    version: str
    profile: str | None
    shape: Shape

    @property
    def scheme(self) -> CategoryScheme:
        """The scheme its Category numbers belong to."""
        if self.profile is None:
            return CategoryScheme.VICS_LEGACY
        return PROFILES[self.profile]

    def key(self) -> str:
        return KEY_1X if self.profile is None else KEY_2X

    def url(self) -> str:
        shape = "Media" if self.shape == "media" else "Cases"
        if self.profile is None:
            return _URL_1X.format(version=self.version, shape=shape)
        return _URL_2X.format(profile=self.profile, shape=shape)


def context_from(key: str, value: object) -> VicsContext:
    """The context that the root member `key: value` states, or ValueError saying why not."""
    if not isinstance(value, str):
        raise ValueError(f'"{key}" must be a string, got {type(value).__name__}')
    if key == KEY_1X:
        found = _MODEL_1X.search(value)
        if found is None:
            raise ValueError(
                f"not a known VICS 1.x data model in {key!r}: {_quoted(value)}"
                " (expected .../DataModels/1.<n>.xml#Media or #Cases)"
            )
        return VicsContext(f"1.{found.group(1)}", None, _shape(found.group(2)))
    found = _MODEL_2X.search(value)
    if found is None:
        raise ValueError(
            f"not a known VICS 2.0 data model in {key!r}: {_quoted(value)}"
            " (expected .../DataModels/2.0.xml/<profile>/$metadata#Media or #Cases)"
        )
    profile = _PROFILE_BY_LOWER.get(found.group(1).lower())
    if profile is None:
        raise ValueError(
            f"unknown VICS 2.0 profile {_quoted(found.group(1))} in {key!r}: {_quoted(value)}"
            f"; known: {', '.join(PROFILES)}"
        )
    return VicsContext("2.0", profile, _shape(found.group(2)))


def context_to_write(version: str, profile: str | None, shape: str) -> VicsContext:
    """The context of a document to write, or ValueError naming what is allowed."""
    if version not in VERSIONS_WRITTEN:
        raise ValueError(f"VICS version {version!r} cannot be written; use one of 1.3, 2.0")
    if shape not in SHAPES:
        raise ValueError(f"VICS shape {shape!r} is unknown; use media or cases")
    if version == "1.3":
        if profile is not None:
            raise ValueError("VICS 1.3 has no profile; leave it out")
        return VicsContext(version, None, _shape(shape))
    canonical = _PROFILE_BY_LOWER.get((profile or "").lower())
    if canonical is None:
        raise ValueError(f"VICS 2.0 needs a profile, one of {', '.join(PROFILES)}")
    return VicsContext(version, canonical, _shape(shape))


def _shape(text: str) -> Shape:
    return "cases" if text.lower() in ("cases", "case") else "media"


def _quoted(text: str) -> str:
    if len(text) > _QUOTE_LIMIT:
        return repr(text[:_QUOTE_LIMIT] + "…")
    return repr(text)
