"""The small tree of domain errors. Each names what the caller must fix; none carries internals.

Modules with logic raise these; servicers map them to gRPC status codes through
`services.core.rpc_status`, and the CLI maps them to exit codes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldProblem:
    """One offending item: a field path such as `media[3].signals[0].value` and what is wrong."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}" if self.field else self.description


class HashexError(Exception):
    """Base of every error a caller may see; its message is safe to show."""


class InvalidArgument(HashexError):
    """The request is malformed; nothing was stored. Lists every problem found (up to a limit)."""

    MAX_PROBLEMS = 20

    def __init__(self, problems: list[FieldProblem] | FieldProblem | str) -> None:
        if isinstance(problems, str):
            problems = [FieldProblem("", problems)]
        elif isinstance(problems, FieldProblem):
            problems = [problems]
        self.problems: tuple[FieldProblem, ...] = tuple(problems[: self.MAX_PROBLEMS])
        more = len(problems) - len(self.problems)
        text = "; ".join(str(p) for p in self.problems)
        if more > 0:
            text += f"; and {more} more"
        super().__init__(text)

    def within(self, prefix: str) -> InvalidArgument:
        """The same problems with their field paths placed under `prefix` (e.g. `media[3]`)."""
        return InvalidArgument(
            [FieldProblem(_join(prefix, p.field), p.description) for p in self.problems]
        )


def _join(prefix: str, field: str) -> str:
    if not field:
        return prefix
    if field.startswith("["):
        return prefix + field
    return f"{prefix}.{field}"


class NotFound(HashexError):
    """The named record does not exist on this node."""


class FailedPrecondition(HashexError):
    """The node is not in a state to do this (for example, not initialised)."""


class PermissionDenied(HashexError):
    """The caller may not do this."""


# What a call is told while the node's database cannot be reached (a state, not a server bug).
DATABASE_UNREACHABLE = "the node's database is unreachable right now; retry later"


class Unavailable(HashexError):
    """A dependency (database, peer) cannot be reached right now; retrying may succeed."""
