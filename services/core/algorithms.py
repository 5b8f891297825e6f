"""Hash algorithms as small plug-ins: name, byte length, text form, validation and, for perceptual
ones, a distance and default threshold.

Text forms are case-insensitive hexadecimal on input and lowercase hexadecimal on output. Parse
errors raise `InvalidArgument` with a message that says exactly what is wrong, and never echo a
long value back.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from services.core.errors import InvalidArgument

_HEX = re.compile(r"[0-9a-fA-F]*")
# Longest text we quote back in an error message.
_QUOTE_LIMIT = 16


class Algorithm(IntEnum):
    """Numbers equal the contract's HashAlgorithm enum values and the database's smallint."""

    MD5 = 1
    SHA1 = 2
    SHA256 = 3
    PDQ = 4
    PHOTODNA = 5


@dataclass(frozen=True)
class AlgorithmSpec:
    algorithm: Algorithm
    name: str
    byte_length: int
    # Perceptual algorithms match by Hamming distance up to `default_threshold`.
    perceptual: bool = False
    default_threshold: int = 0
    # Quality below this is stored but not used for near matching (perceptual only).
    min_match_quality: int = 0

    @property
    def hex_length(self) -> int:
        return self.byte_length * 2

    def parse_hex(self, text: str) -> bytes:
        """The value of `text` (hex, any case, surrounding blanks ignored) or InvalidArgument."""
        stripped = text.strip()
        if not stripped:
            raise InvalidArgument(f"{self.name} value is empty")
        if len(stripped) != self.hex_length:
            raise InvalidArgument(
                f"{self.name} needs {self.hex_length} hex characters, got {len(stripped)}"
            )
        if not _HEX.fullmatch(stripped):
            bad = next(c for c in stripped if c not in "0123456789abcdefABCDEF")
            raise InvalidArgument(f"{self.name} value is not hexadecimal (found {bad!r})")
        return bytes.fromhex(stripped)

    def format_hex(self, value: bytes) -> str:
        self.check_bytes(value)
        return value.hex()

    def check_bytes(self, value: bytes) -> None:
        if len(value) != self.byte_length:
            raise InvalidArgument(f"{self.name} needs {self.byte_length} bytes, got {len(value)}")

    def check_quality(self, quality: int | None) -> None:
        if quality is None:
            return
        if not self.perceptual:
            raise InvalidArgument(f"{self.name} has no quality; leave it out")
        # bool is an int subclass: `True` must not pass as quality 1.
        if isinstance(quality, bool) or not 0 <= quality <= 100:
            raise InvalidArgument(f"{self.name} quality must be 0-100, got {quality}")


ALGORITHMS: dict[Algorithm, AlgorithmSpec] = {
    spec.algorithm: spec
    for spec in (
        AlgorithmSpec(Algorithm.MD5, "md5", 16),
        AlgorithmSpec(Algorithm.SHA1, "sha1", 20),
        AlgorithmSpec(Algorithm.SHA256, "sha256", 32),
        AlgorithmSpec(
            Algorithm.PDQ,
            "pdq",
            32,
            perceptual=True,
            default_threshold=31,
            min_match_quality=50,
        ),
        AlgorithmSpec(Algorithm.PHOTODNA, "photodna", 144),
    )
}
BY_NAME: dict[str, AlgorithmSpec] = {spec.name: spec for spec in ALGORITHMS.values()}
# Strongest first: the order used to derive a media id from its signals.
CRYPTOGRAPHIC_PREFERENCE = (Algorithm.SHA256, Algorithm.SHA1, Algorithm.MD5, Algorithm.PHOTODNA)


def spec_for_number(number: int) -> AlgorithmSpec:
    """The algorithm with contract number `number`, or InvalidArgument."""
    if number == 0:
        raise InvalidArgument("algorithm is required")
    try:
        return ALGORITHMS[Algorithm(number)]
    except ValueError:
        raise InvalidArgument(f"unknown algorithm number {number}") from None


def spec_for_name(name: str) -> AlgorithmSpec:
    """The algorithm called `name` (any case), or InvalidArgument listing the known ones."""
    spec = BY_NAME.get(name.strip().lower())
    if spec is None:
        known = ", ".join(BY_NAME)
        raise InvalidArgument(f"unknown algorithm {_quote(name)}; known: {known}")
    return spec


@dataclass(frozen=True)
class SignalValue:
    """One hash: an algorithm and its raw bytes (plus PDQ quality when known)."""

    algorithm: Algorithm
    value: bytes
    quality: int | None = None

    @property
    def spec(self) -> AlgorithmSpec:
        return ALGORITHMS[self.algorithm]

    def text(self) -> str:
        """The canonical `algo:hex` form."""
        return f"{self.spec.name}:{self.value.hex()}"

    def matchable(self) -> bool:
        """False for a perceptual hash whose quality is below its algorithm's threshold (every
        flat or black image hashes alike): kept as a signal, never matched, exactly or near."""
        return self.quality is None or self.quality >= self.spec.min_match_quality

    def usable_for_near_match(self) -> bool:
        return self.spec.perceptual and self.matchable()


def make_signal(spec: AlgorithmSpec, hex_text: str, quality: int | None = None) -> SignalValue:
    value = spec.parse_hex(hex_text)
    spec.check_quality(quality)
    return SignalValue(spec.algorithm, value, quality)


def parse_signal_text(text: str) -> SignalValue:
    """Parse `ALGO:HEX` (as written on the command line, e.g. `md5:9e10...`)."""
    stripped = text.strip()
    if not stripped:
        raise InvalidArgument("empty hash; write it as ALGO:HEX, e.g. md5:9e107d9d...")
    name, sep, value = stripped.partition(":")
    if not sep or not name.strip():
        raise InvalidArgument(
            f"{_quote(stripped)} has no algorithm; write it as ALGO:HEX, e.g. md5:9e107d9d..."
        )
    return make_signal(spec_for_name(name), value)


def format_signal_text(signal: SignalValue) -> str:
    return signal.text()


def distinct_signals(signals: Iterable[SignalValue]) -> tuple[SignalValue, ...]:
    """One signal per (algorithm, value), the first given kept (its quality), in the canonical
    (algorithm, value) order records are stored and logged in."""
    unique: dict[tuple[int, bytes], SignalValue] = {}
    for signal in signals:
        unique.setdefault((signal.algorithm, signal.value), signal)
    return tuple(unique[key] for key in sorted(unique))


def derived_media_id(signals: list[SignalValue]) -> str | None:
    """The id a media gets from its strongest cryptographic hash, so resubmission is idempotent."""
    by_algorithm = {s.algorithm: s for s in signals}
    for algorithm in CRYPTOGRAPHIC_PREFERENCE:
        if algorithm in by_algorithm:
            signal = by_algorithm[algorithm]
            if algorithm is Algorithm.PHOTODNA:
                # 288 hex characters would exceed the id limit: name it by its digest instead.
                return f"photodna-sha256:{hashlib.sha256(signal.value).hexdigest()}"
            return signal.text()
    return None


def _quote(text: str) -> str:
    if len(text) > _QUOTE_LIMIT:
        return repr(text[:_QUOTE_LIMIT] + "…")
    return repr(text)
