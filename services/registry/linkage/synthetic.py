"""A seeded synthetic federation with known ground truth, for the linkage tests and
`bench/linkage.py`: how well series linkage recovers which series are the same material.

Material is modelled at the hash level. A true series is a set of base images (random 256-bit
PDQ values); an agency holding it has copies of a subset, each copy re-encoded (1-4 bits of its
PDQ flipped, a new md5), resized (4-9 bits) or slightly cropped (10-15 bits), or an exact copy
(same md5 and PDQ): two copies of one image differ by at most 30 bits, inside the index's 31.
Distractors are unrelated images in series of their own; some pairs of unrelated series share
one or two stray near matches, which must never link them. Unrelated random PDQ values lie
about 128 bits apart, so no false near pair arises by chance.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

AGENCIES = ("de-bka", "fr-ocrvp", "nl-politie")


@dataclass(frozen=True)
class SyntheticMedia:
    origin: str
    media_id: str
    md5: bytes
    pdq: bytes
    series_id: str


@dataclass(frozen=True)
class TrueSeries:
    number: int
    # (pdq, md5) of each base image.
    images: tuple[tuple[bytes, bytes], ...]
    holders: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SyntheticFederation:
    media: tuple[SyntheticMedia, ...]
    true_series: tuple[TrueSeries, ...]
    # Pairs of (origin, series_id) of different agencies holding the same true series.
    true_pairs: frozenset[frozenset[tuple[str, str]]]
    series_count: int
    stray_pairs: int


def _flip(value: bytes, bits: int, rng: random.Random) -> bytes:
    out = bytearray(value)
    for bit in rng.sample(range(256), bits):
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _copy(base: bytes, base_md5: bytes, rng: random.Random) -> tuple[bytes, bytes]:
    """A copy of one image as another agency's seizure holds it: (md5, pdq)."""
    kind = rng.random()
    if kind < 0.15:
        return base_md5, base
    if kind < 0.5:
        bits = rng.randint(1, 4)  # re-encoded
    elif kind < 0.8:
        bits = rng.randint(4, 9)  # resized
    else:
        bits = rng.randint(10, 15)  # slightly cropped
    return rng.randbytes(16), _flip(base, bits, rng)


def generate(
    *, seed: int = 10, true_series: int = 90, distractor_series: int = 60, stray_pairs: int = 40
) -> SyntheticFederation:
    rng = random.Random(seed)
    media: list[SyntheticMedia] = []
    series_members: dict[tuple[str, str], list[int]] = {}
    true_pairs: set[frozenset[tuple[str, str]]] = set()
    truths: list[TrueSeries] = []

    def add(origin: str, series_id: str, md5: bytes, pdq: bytes) -> None:
        key = (origin, series_id)
        series_members.setdefault(key, []).append(len(media))
        number = len(series_members[key])
        media.append(SyntheticMedia(origin, f"{series_id}-{number}", md5, pdq, series_id))

    for t in range(true_series):
        size = rng.randint(8, 40)
        images = [(rng.randbytes(32), rng.randbytes(16)) for _ in range(size)]
        holders = rng.sample(AGENCIES, rng.choice((1, 2, 2, 3, 3)))
        keys = []
        for agency in holders:
            series_id = f"{agency}-t{t}"
            # Each holder has 70-100 % of the images: any two share at least 40 % of them
            # (3 or more), past the default evidence threshold.
            held = rng.sample(images, max(6, round(size * rng.uniform(0.7, 1.0))))
            for base, base_md5 in held:
                md5, pdq = _copy(base, base_md5, rng)
                add(agency, series_id, md5, pdq)
            keys.append((agency, series_id))
        true_pairs |= {frozenset((a, b)) for a in keys for b in keys if a != b}
        truths.append(TrueSeries(t, tuple(images), tuple(keys)))
    distractors = []
    for d in range(distractor_series):
        agency = rng.choice(AGENCIES)
        series_id = f"{agency}-d{d}"
        for _ in range(rng.randint(5, 30)):
            add(agency, series_id, rng.randbytes(16), rng.randbytes(32))
        distractors.append((agency, series_id))
    # Stray near matches between unrelated series of different agencies (one or two media).
    all_series = sorted(series_members)
    made = 0
    while made < stray_pairs:
        a, b = rng.sample(all_series, 2)
        if a[0] == b[0] or frozenset((a, b)) in true_pairs:
            continue
        for _ in range(rng.randint(1, 2)):
            source = media[rng.choice(series_members[a])]
            add(b[0], b[1], rng.randbytes(16), _flip(source.pdq, rng.randint(3, 12), rng))
        made += 1
    return SyntheticFederation(
        tuple(media), tuple(truths), frozenset(true_pairs), len(series_members), made
    )


def seizure(fed: SyntheticFederation, *, origin: str, size: int, seed: int) -> SyntheticFederation:
    """A new agency's seizure of about `size` media: copies of some of the federation's true
    series (half of it) and new material; its truth holds every true pair after it arrives."""
    rng = random.Random(seed)
    media: list[SyntheticMedia] = []
    pairs = set(fed.true_pairs)
    known = list(fed.true_series)
    rng.shuffle(known)
    while len(media) < size // 2 and known:
        truth = known.pop()
        series_id = f"{origin}-t{truth.number}"
        held = rng.sample(truth.images, max(6, round(len(truth.images) * rng.uniform(0.7, 1.0))))
        for number, (base, base_md5) in enumerate(held):
            md5, pdq = _copy(base, base_md5, rng)
            media.append(SyntheticMedia(origin, f"{series_id}-{number}", md5, pdq, series_id))
        pairs |= {frozenset(((origin, series_id), holder)) for holder in truth.holders}
    new_series = 0
    while len(media) < size:
        series_id = f"{origin}-n{new_series}"
        for number in range(rng.randint(8, 40)):
            media.append(
                SyntheticMedia(
                    origin, f"{series_id}-{number}", rng.randbytes(16), rng.randbytes(32), series_id
                )
            )
        new_series += 1
    count = len({m.series_id for m in media})
    return SyntheticFederation(tuple(media), (), frozenset(pairs), count, 0)


def precision_recall(
    found: Iterable[frozenset[tuple[str, str]]], truth: frozenset[frozenset[tuple[str, str]]]
) -> tuple[float, float]:
    """Of linked series pairs: share of those found that are true, of the true that are found."""
    found_set = set(found)
    hits = len(found_set & truth)
    precision = hits / len(found_set) if found_set else 1.0
    recall = hits / len(truth) if truth else 1.0
    return precision, recall


async def load(conn: Any, media: Sequence[SyntheticMedia]) -> list[tuple[int, str, bytes]]:
    """Write `media` straight into the registry's tables, as sync's apply does (benches and
    tests only); returns (row, origin, pdq) of each for the PDQ index."""
    series_keys = sorted({(m.origin, m.series_id) for m in media})
    series_rows = {
        (r["origin"], r["series_id"]): r["id"]
        for r in await conn.fetch(
            "INSERT INTO series (origin, series_id) "
            "SELECT * FROM unnest($1::text[], $2::text[]) "
            "ON CONFLICT (origin, series_id) DO UPDATE SET name = series.name "
            "RETURNING id, origin, series_id",
            [k[0] for k in series_keys],
            [k[1] for k in series_keys],
        )
    }
    rows = await conn.fetch(
        "INSERT INTO media (origin, media_id, media_type) "
        "SELECT o, m, 1 FROM unnest($1::text[], $2::text[]) AS u(o, m) RETURNING id",
        [m.origin for m in media],
        [m.media_id for m in media],
    )
    ids = [r["id"] for r in rows]
    signals: list[tuple[int, int, bytes, int | None]]
    signals = [(row, 1, m.md5, None) for row, m in zip(ids, media, strict=True)]
    signals += [(row, 4, m.pdq, 90) for row, m in zip(ids, media, strict=True)]
    await conn.copy_records_to_table(
        "signals", records=signals, columns=("media_row", "algorithm", "value", "quality")
    )
    links = [(row, series_rows[(m.origin, m.series_id)]) for row, m in zip(ids, media, strict=True)]
    await conn.copy_records_to_table(
        "media_series", records=links, columns=("media_row", "series_row")
    )
    return [(row, m.origin, m.pdq) for row, m in zip(ids, media, strict=True)]


async def linked_pairs(conn: Any) -> set[frozenset[tuple[str, str]]]:
    """The series pairs the node's linkage holds as linked."""
    rows = await conn.fetch(
        "SELECT a.origin AS ao, a.series_id AS a_id, b.origin AS bo, b.series_id AS b_id "
        "FROM series_links l JOIN series a ON a.id = l.low_series "
        "JOIN series b ON b.id = l.high_series WHERE l.linked"
    )
    return {frozenset(((r["ao"], r["a_id"]), (r["bo"], r["b_id"]))) for r in rows}
