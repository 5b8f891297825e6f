"""Node configuration: precedence, validation with clear errors, secrets masked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.core.config import load_config, write_config
from services.core.errors import FailedPrecondition, InvalidArgument


def test_defaults_file_and_environment_precedence(tmp_path: Path) -> None:
    write_config(tmp_path, node_id="gb-nca", listen="127.0.0.1:7800")
    config = load_config(tmp_path, env={})
    assert (config.node_id, config.listen, config.database_url) == (
        "gb-nca",
        "127.0.0.1:7800",
        None,
    )
    url = "postgresql://hashex:s3cret@db.internal/hashex"
    config = load_config(tmp_path, env={"DATABASE_URL": url, "HASHEX_LISTEN": "[::1]:7900"})
    assert config.listen == "[::1]:7900" and config.database_url == url
    assert "s3cret" not in repr(config) and "s3cret" not in str(config.masked())


def test_missing_node_is_explained(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="run `hashex node init` first"):
        load_config(tmp_path, env={})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('listen = "0.0.0.0:7700"', "is not loopback"),
        ('listen = "nonsense"', "must be HOST:PORT"),
        ("pdq_default_max_distance = 99", "pdq_default_max_distance must be 0-64"),
        ("colour = 1", "unknown setting(s) colour"),
        ('log_level = "LOUD"', "log_level must be"),
    ],
)
def test_invalid_settings_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    path = write_config(tmp_path, node_id="gb-nca")
    key = extra.split(" ")[0]
    lines = [line for line in path.read_text().splitlines() if not line.startswith(key)]
    path.write_text("\n".join([*lines, extra]) + "\n")
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        load_config(tmp_path, env={})


def test_non_loopback_needs_an_explicit_opt_in(tmp_path: Path) -> None:
    path = write_config(tmp_path, node_id="gb-nca", listen="127.0.0.1:1")
    path.write_text(
        path.read_text().replace('"127.0.0.1:1"', '"0.0.0.0:7700"')
        + "allow_plaintext_non_loopback = true\n"
    )
    assert load_config(tmp_path, env={}).listen == "0.0.0.0:7700"


def test_bad_node_id_and_broken_toml(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="node id 'GB NCA' must be"):
        write_config(tmp_path, node_id="GB NCA")
    (tmp_path / "node.toml").write_text("[node\n")
    with pytest.raises(InvalidArgument, match=re.escape("node.toml")):
        load_config(tmp_path, env={})
