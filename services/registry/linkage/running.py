"""The linker as a background task of whatever runs the registry (`node up`, `registry serve`)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from services.core.config import NodeConfig
from services.registry.linkage.evidence import LinkageSettings
from services.registry.linkage.linker import Linker
from services.registry.registry import Registry

_log = logging.getLogger(__name__)


@dataclass
class RunningLinker:
    linker: Linker
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.linker.stop()
        await self.task


def linkage_settings(config: NodeConfig) -> LinkageSettings:
    return LinkageSettings(
        min_linked_media=config.linkage_min_linked_media,
        min_linked_fraction=config.linkage_min_linked_fraction,
        pdq_max_distance=config.linkage_pdq_max_distance,
    )


def start_linker(config: NodeConfig, registry: Registry) -> RunningLinker:
    linker = Linker(
        database=registry.database,
        index=registry.index,
        node_id=config.node_id,
        settings=linkage_settings(config),
        settle_s=config.linkage_settle_s,
    )
    _log.info("linker of %s started (%s)", config.node_id, linker.settings)
    return RunningLinker(linker, asyncio.create_task(linker.run(), name="linker"))
