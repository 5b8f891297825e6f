"""Warnings of a node's certificates near or past expiry, and the daily check that logs them
(on a fast injected clock: a day passes in a fraction of a real second)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.core import tls
from services.core.cert_expiry import (
    WatchedCertificate,
    certificate_states,
    expiry_warnings,
    watch_expiry,
)
from services.core.clock import Clock
from tests.waiting import wait_for

CA = tls.create_node_ca(node_id="gb-nca")


def node_pem(tmp_path: Path) -> WatchedCertificate:
    path = tmp_path / "node.pem"
    path.write_bytes(tls.issue_node_certificate(CA).certificate_pem)
    return WatchedCertificate("node certificate", path, "renew it with `hashex node renew-cert`")


def test_a_certificate_is_warned_about_from_seven_days_before_its_expiry(tmp_path: Path) -> None:
    watched = node_pem(tmp_path)
    [state] = certificate_states([watched], datetime.now(UTC))
    assert state.problem is None and state.not_after is not None
    end = state.not_after
    assert expiry_warnings([watched], end - timedelta(days=7, minutes=1)) == []
    [soon] = expiry_warnings([watched], end - timedelta(days=3, hours=1))
    assert soon == (
        f"the node certificate {watched.path} expires in 3 days, on {end:%Y-%m-%d %H:%M} UTC; "
        "renew it with `hashex node renew-cert`"
    )
    [today] = expiry_warnings([watched], end - timedelta(hours=2))
    assert "expires within a day" in today
    [expired] = expiry_warnings([watched], end + timedelta(seconds=1))
    assert f"expired on {end:%Y-%m-%d %H:%M} UTC" in expired
    gone = WatchedCertificate("node CA certificate", tmp_path / "missing.pem", "")
    [missing] = expiry_warnings([gone], end)
    assert "missing.pem is unreadable" in missing


async def test_the_watch_logs_at_start_and_once_a_day(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watched = node_pem(tmp_path)
    [state] = certificate_states([watched], datetime.now(UTC))
    assert state.not_after is not None
    near = state.not_after - timedelta(days=2)
    caplog.set_level(logging.WARNING, logger="services.core.cert_expiry")
    # 100,000 times real time: a day of the watch is under a real second.
    watch = asyncio.create_task(watch_expiry([watched], clock=Clock(100_000), now=lambda: near))

    async def warned(times: int) -> bool:
        return sum("expires in 2 days" in r.message for r in caplog.records) >= times

    try:
        await wait_for(lambda: warned(1), 10, "no warning at start")
        await wait_for(lambda: warned(2), 10, "no warning a day later")
    finally:
        watch.cancel()
