"""A database knows the node it belongs to: the first node to start on it claims it, every start
after that is checked, by node id and (where the case key is held) by the key's fingerprint."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from services.core.node_claim.store import NodeClaim, WrongDatabase, claim_database
from services.registry.cases import CaseSealer
from tests.cli.node_process import HASHEX
from tests.registry.node_harness import init_node_dir, running_node


async def test_the_first_node_claims_the_database_and_only_it_may_start_on_it(
    db_pool: Any,
) -> None:
    async with db_pool.acquire() as conn:
        assert await claim_database(conn, node_id="gb-nca", case_key_fingerprint="aa") == (
            NodeClaim("gb-nca", "aa")
        )
        assert await claim_database(conn, node_id="gb-nca", case_key_fingerprint="aa")
        assert await claim_database(conn, node_id="gb-nca", case_key_fingerprint=None)
        with pytest.raises(WrongDatabase, match="belongs to node 'gb-nca', not 'fail-test'"):
            await claim_database(conn, node_id="fail-test", case_key_fingerprint="aa")
        with pytest.raises(WrongDatabase, match="belongs to node 'gb-nca', not 'fail-test'"):
            await claim_database(conn, node_id="fail-test", case_key_fingerprint=None)
        with pytest.raises(WrongDatabase, match=r"case-data key .*restore keys/case\.key"):
            await claim_database(conn, node_id="gb-nca", case_key_fingerprint="bb")
        assert await conn.fetchval("SELECT count(*) FROM node_claim") == 1


async def test_a_claim_without_the_case_key_is_completed_by_the_registry(db_pool: Any) -> None:
    """A separate sync or gateway may start first; the registry then records its key."""
    async with db_pool.acquire() as conn:
        assert await claim_database(conn, node_id="gb-nca", case_key_fingerprint=None) == (
            NodeClaim("gb-nca", "")
        )
        await claim_database(conn, node_id="gb-nca", case_key_fingerprint="cc")
        with pytest.raises(WrongDatabase):
            await claim_database(conn, node_id="gb-nca", case_key_fingerprint="dd")


def test_the_fingerprint_names_the_key_without_revealing_it() -> None:
    key = bytes(range(32))
    fingerprint = CaseSealer(key).fingerprint
    assert fingerprint == CaseSealer(key).fingerprint != CaseSealer(bytes(32)).fingerprint
    assert len(fingerprint) == 16 and key.hex()[:16] != fingerprint


async def test_a_node_refuses_another_nodes_database_in_one_line(
    empty_database: str, node_data_dir: Path
) -> None:
    """`hashex node up` of fail-test on gb-nca's database stops before serving anything."""
    owner, intruder = node_data_dir / "gb", node_data_dir / "fail"
    init_node_dir(owner, "gb-nca")
    async with running_node(owner, empty_database):
        pass
    init_node_dir(intruder, "fail-test")
    env = {**os.environ, "DATABASE_URL": empty_database}
    done = await asyncio.to_thread(
        subprocess.run,
        [*HASHEX, "node", "up", "--data-dir", str(intruder)],
        env=env,
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("hashex:")]
    assert "this database belongs to node 'gb-nca', not 'fail-test'" in line
    assert "Traceback" not in done.stderr
