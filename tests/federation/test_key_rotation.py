"""A node rotates its signing key while federated: peers learn the new key from its log,
`hashex peer list` on a running node shows it, and deleting the old key file afterwards stops
nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hashex.v1 import federation_pb2
from services.cli.main import main as hashex_main
from tests.federation.harness import cli, federation
from tests.registry.node_harness import md5, submission
from tests.waiting import wait_for

CURRENT = federation_pb2.PeerSigningKey.STATE_CURRENT


async def test_a_peer_learns_a_rotated_key_and_peer_list_shows_it(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with federation(["gb-nca", "us-hsi"], tmp_path, pg_server) as fed:
        gb, us = fed["gb-nca"], fed["us-hsi"]
        await gb.submit(submission("before", md5(bytes(16))))
        await asyncio.to_thread(cli, "node", "rotate-key", "--data-dir", gb.data_dir)

        async def learned() -> bool:
            [peer] = (await us.status()).peers
            return [(k.key_id, k.state, k.on_card) for k in peer.signing_keys][-1:] == [
                ("ed25519:2", CURRENT, False)
            ]

        await wait_for(learned, 30, "us-hsi never learned gb-nca's key 2")
        capsys.readouterr()
        code = await asyncio.to_thread(
            hashex_main, ["peer", "list", "--data-dir", str(us.data_dir)]
        )
        out = capsys.readouterr().out
        assert code == 0
        assert "keys ed25519:1 (retired at seq" in out
        assert "ed25519:2 (current, learned from its log)" in out

        (gb.data_dir / "keys" / "signing" / "ed25519_1.key").unlink()
        await gb.submit(submission("after", md5(bytes(range(16)))))
        await fed.converged()
        assert await us.media_ids("gb-nca") == {"before", "after"}
