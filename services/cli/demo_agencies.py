"""The demo's three agencies and what each seized: the synthetic images (by seed) of its
seizure, the category and series it files them under, and its victim's status and desk."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Agency:
    node_id: str
    seeds: range  # the synthetic images of its seizure
    category: str
    series: str
    victim_status: str
    desk: str


GB = Agency("gb-nca", range(0, 12), "caid-uk:A", "gb-willow", "identified", "GB-NCA victim-ID desk")
US = Agency("us-hsi", range(6, 18), "vics-us:1", "us-tern", "unidentified", "US-HSI victim-ID desk")
DE = Agency("de-bka", range(0, 0), "vics-us:2", "de-heron", "in_progress", "DE-BKA VID desk")
AGENCIES = (GB, US, DE)
# Material US classes in a category it does not share with DE.
US_RESTRICTED = range(100, 104)
