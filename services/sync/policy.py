"""What this node lets leave for one peer: its sharing policy, and the file that holds it.

A policy names the categories and hash algorithms that may leave, whether victim status and the
responsible desk are disclosed, and the series under embargo (active operations: nothing of them
leaves). It is enforced at the source, before signing (services/sync/policy_filter.py).

Each saved change bumps `generation`; a peer whose last batch was filtered under an older
generation is re-offered the log from the start, so entries a widened policy now allows reach it
(re-applying what it already holds is a no-op on its side).

The file is `policy/<peer-id>.toml` in the node's data directory:

    generation = 3
    categories = ["vics-us:1", "vics-us:2", "caid-uk:A", "uncategorised"]   # or ["all"]
    algorithms = ["md5", "sha1", "pdq"]                                    # or ["all"]
    disclose_victim_status = true
    disclose_desk = false
    embargoed_series = ["op-nightjar"]
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from services.core.algorithms import BY_NAME
from services.core.errors import FailedPrecondition, InvalidArgument
from services.registry.model import CATEGORY_CODES, SCHEME_NAMES

ALL = "all"
UNCATEGORISED = "uncategorised"
# Category schemes by their text name, with the codes each allows (contract numbers as values).
CATEGORY_SCHEMES: dict[str, tuple[int, frozenset[str]]] = {
    name: (int(scheme), frozenset(CATEGORY_CODES[scheme])) for scheme, name in SCHEME_NAMES.items()
}
SCHEME_TEXT = {number: name for name, (number, _) in CATEGORY_SCHEMES.items()}


@dataclass(frozen=True)
class SharingPolicy:
    """None for `categories` / `algorithms` means every one."""

    # Allowed categories as "scheme:code" and/or "uncategorised"; None: all.
    categories: frozenset[str] | None = None
    # Allowed algorithm names (md5, sha1, sha256, pdq, photodna); None: all.
    algorithms: frozenset[str] | None = None
    disclose_victim_status: bool = True
    disclose_desk: bool = False
    embargoed_series: frozenset[str] = field(default_factory=frozenset)
    generation: int = 1

    def allows_category(self, scheme: int, code: str) -> bool:
        """`scheme` is the contract's CategoryScheme number (0: the media is uncategorised)."""
        if self.categories is None:
            return True
        if scheme == 0:
            return UNCATEGORISED in self.categories
        return f"{SCHEME_TEXT.get(scheme, '?')}:{code}" in self.categories

    def allows_algorithm(self, name: str) -> bool:
        return self.algorithms is None or name in self.algorithms


# The policy a newly pinned peer gets: hashes of every category and algorithm, victim status
# disclosed (the point of the exchange), the desk withheld until the operator chooses to share it.
DEFAULT_POLICY = SharingPolicy()


def policy_path(policy_dir: Path, peer_id: str) -> Path:
    return policy_dir / f"{peer_id}.toml"


def load_policy(policy_dir: Path, peer_id: str) -> SharingPolicy | None:
    """The saved policy for a peer, or None when none was ever saved (nothing is shared then)."""
    path = policy_path(policy_dir, peer_id)
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FailedPrecondition(f"policy file {path} is not valid TOML: {exc}") from None
    try:
        return parse_policy(raw)
    except InvalidArgument as exc:
        raise FailedPrecondition(f"policy file {path}: {exc}") from None


def parse_policy(raw: dict[str, Any]) -> SharingPolicy:
    known = {
        "generation",
        "categories",
        "algorithms",
        "disclose_victim_status",
        "disclose_desk",
        "embargoed_series",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidArgument(f"unknown policy setting(s) {', '.join(unknown)}")
    generation = raw.get("generation", 1)
    if not isinstance(generation, int) or generation < 1:
        raise InvalidArgument("generation must be a whole number >= 1")
    return SharingPolicy(
        categories=parse_categories(_strings(raw, "categories", [ALL])),
        algorithms=parse_algorithms(_strings(raw, "algorithms", [ALL])),
        disclose_victim_status=_flag(raw, "disclose_victim_status", True),
        disclose_desk=_flag(raw, "disclose_desk", False),
        embargoed_series=frozenset(_strings(raw, "embargoed_series", [])),
        generation=generation,
    )


def parse_categories(values: list[str]) -> frozenset[str] | None:
    if ALL in values:
        return None
    allowed: set[str] = set()
    for value in values:
        if value == UNCATEGORISED:
            allowed.add(value)
            continue
        scheme, _, code = value.partition(":")
        if scheme not in CATEGORY_SCHEMES or code not in CATEGORY_SCHEMES[scheme][1]:
            raise InvalidArgument(
                f"category {value!r} must be 'all', 'uncategorised' or SCHEME:CODE with scheme "
                "vics-us (0-4), caid-uk (A/B/C) or interpol-baseline (yes/no)"
            )
        allowed.add(value)
    return frozenset(allowed)


def parse_algorithms(values: list[str]) -> frozenset[str] | None:
    if ALL in values:
        return None
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise InvalidArgument(
            f"unknown algorithm(s) {', '.join(unknown)}; known: all, " + ", ".join(sorted(BY_NAME))
        )
    return frozenset(values)


def save_policy(policy_dir: Path, peer_id: str, policy: SharingPolicy) -> SharingPolicy:
    """Write `policy` for the peer with the generation after the saved one (atomic replace);
    returns what was saved. Saving a policy equal to the saved one changes nothing."""
    current = load_policy(policy_dir, peer_id)
    if current is not None and replace(current, generation=policy.generation) == policy:
        return current
    saved = replace(policy, generation=(current.generation + 1) if current else 1)
    policy_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = policy_path(policy_dir, peer_id)
    temporary = path.with_suffix(".toml.tmp")
    temporary.write_text(render_policy(saved), encoding="utf-8")
    os.replace(temporary, path)
    return saved


def render_policy(policy: SharingPolicy) -> str:
    def listed(values: frozenset[str] | None) -> str:
        items = [ALL] if values is None else sorted(values)
        return "[" + ", ".join(f'"{v}"' for v in items) + "]"

    return (
        "# Sharing policy for one peer; change it with `hashex policy set`, which bumps the\n"
        "# generation so that entries a wider policy allows are offered again.\n"
        f"generation = {policy.generation}\n"
        f"categories = {listed(policy.categories)}\n"
        f"algorithms = {listed(policy.algorithms)}\n"
        f"disclose_victim_status = {str(policy.disclose_victim_status).lower()}\n"
        f"disclose_desk = {str(policy.disclose_desk).lower()}\n"
        f"embargoed_series = {listed(policy.embargoed_series)}\n"
    )


def _strings(raw: dict[str, Any], name: str, default: list[str]) -> list[str]:
    value = raw.get(name, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{name} must be a list of strings")
    return value


def _flag(raw: dict[str, Any], name: str, default: bool) -> bool:
    value = raw.get(name, default)
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name} must be true or false")
    return value
