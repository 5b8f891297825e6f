"""Fixtures for gateway tests: one set of certificates per module, a gateway per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.harness import GatewayUnderTest, Pki, running_gateway


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create()


@pytest.fixture
async def gateway(db_pool: Any, tmp_path: Path, pki: Pki) -> AsyncIterator[GatewayUnderTest]:
    async with running_gateway(db_pool, tmp_path, pki) as running:
        yield running
