"""The demo's one wait: it ends when the check is satisfied and fails the demo, naming what is
missing, when the deadline passes."""

from __future__ import annotations

import pytest

from services.cli.demo_shell import wait_until


def test_a_wait_ends_once_nothing_is_missing() -> None:
    answers = iter(["two flags", "one flag", None])
    wait_until(lambda: next(answers), 30, "flags")


def test_a_wait_past_its_deadline_fails_the_demo_saying_what_is_missing() -> None:
    with pytest.raises(SystemExit) as failed:
        wait_until(lambda: "CONCURRENT_WORK de-bka/de-heron ~ us-hsi/us-tern", 0, "no flags")
    assert str(failed.value) == (
        "demo failed: no flags within 0 s: CONCURRENT_WORK de-bka/de-heron ~ us-hsi/us-tern"
    )
