"""Node configuration: precedence, validation with clear errors, secrets masked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.core.config import load_config, require_node_material, write_config
from services.core.db.location import EmbeddedDatabase, ExternalDatabase
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
        ("allow_plaintext_non_loopback = false", "allow_plaintext_non_loopback was removed"),
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


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('pdq_default_max_distance = "no"', "pdq_default_max_distance: expected a whole number"),
        ("listen = 7700", "listen: expected a string"),
        ('rate_limit_hashes_per_s = "fast"', "rate_limit_hashes_per_s: expected a number"),
        ("rate_limit_hashes_burst = 2.5", "rate_limit_hashes_burst: expected a whole number"),
        ("max_request_bytes = true", "max_request_bytes: expected a whole number"),
        ('database_url = ["postgresql://u:s3cret@db/h"]', "database_url: expected a string"),
        ('database = "elsewhere"', "database: expected 'embedded' or 'external'"),
    ],
)
def test_each_setting_is_of_its_type(tmp_path: Path, extra: str, message: str) -> None:
    """Checked whole: every wrong setting is named with the file and the type it needs, and
    a secret is never echoed."""
    path = write_config(tmp_path, node_id="gb-nca")
    key = extra.split(" ")[0]
    lines = [line for line in path.read_text().splitlines() if not line.startswith(key)]
    path.write_text("\n".join([*lines, extra, 'shutdown_grace_s = "soon"']) + "\n")
    with pytest.raises(InvalidArgument) as refused:
        load_config(tmp_path, env={})
    text = str(refused.value)
    assert f"{path}: " in text and message in text
    assert "shutdown_grace_s: expected a number" in text  # every problem, not the first only
    assert "s3cret" not in text and "Traceback" not in text


def test_whole_numbers_are_accepted_as_seconds(tmp_path: Path) -> None:
    path = write_config(tmp_path, node_id="gb-nca")
    path.write_text(path.read_text() + "pull_hold_s = 600\nshutdown_grace_s = 5\n")
    config = load_config(tmp_path, env={})
    assert (config.pull_hold_s, config.shutdown_grace_s) == (600.0, 5.0)


def test_an_internal_port_may_listen_beyond_loopback(tmp_path: Path) -> None:
    """The registry's `listen` is only served by `registry serve`, where every call but health
    needs the gateway's signed caller (no plaintext port is open to anyone any more)."""
    path = write_config(tmp_path, node_id="gb-nca", listen="127.0.0.1:1")
    path.write_text(path.read_text().replace('"127.0.0.1:1"', '"0.0.0.0:7700"'))
    assert load_config(tmp_path, env={}).listen == "0.0.0.0:7700"


def test_bad_node_id_and_broken_toml(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="node id 'GB NCA' must be"):
        write_config(tmp_path, node_id="GB NCA")
    (tmp_path / "node.toml").write_text("[node\n")
    with pytest.raises(InvalidArgument, match=re.escape("node.toml")):
        load_config(tmp_path, env={})


def test_a_node_missing_keys_or_certificates_is_told_how_to_complete_itself(
    tmp_path: Path,
) -> None:
    from services.cli.main import main as hashex_main

    assert hashex_main(["node", "init", "--node-id", "gb-nca", "--data-dir", str(tmp_path)]) == 0
    config = load_config(tmp_path, env={})
    require_node_material(config, internal_key=True)  # a complete node passes
    (config.tls_dir / "node.key").unlink()
    for key in config.signing_keys_dir.glob("*.key"):
        key.unlink()
    with pytest.raises(FailedPrecondition) as refused:
        require_node_material(config)
    message = str(refused.value)
    assert "tls/node.key" in message and "keys/signing/ed25519_1.key" in message
    assert "tls/ca.pem" not in message
    assert f"hashex node init --node-id gb-nca --data-dir {tmp_path}" in message


def test_the_database_is_where_the_node_chose(tmp_path: Path) -> None:
    url = "postgresql://hashex:s3cret@db.internal/hashex"
    write_config(tmp_path, node_id="gb-nca")
    assert load_config(tmp_path, env={}).database_location() == EmbeddedDatabase(tmp_path)
    with pytest.raises(FailedPrecondition, match="unset DATABASE_URL for this node"):
        load_config(tmp_path, env={"DATABASE_URL": url}).database_location()

    (tmp_path / "node.toml").unlink()
    write_config(tmp_path, node_id="gb-nca", database="external")
    config = load_config(tmp_path, env={"DATABASE_URL": url})
    assert config.database_location() == ExternalDatabase(url, source="DATABASE_URL")
    shown = config.masked()
    assert shown["database"] == "external" and "s3cret" not in str(shown)
    assert shown["database_url"] == "postgresql://hashex:***@db.internal/hashex (from DATABASE_URL)"
    with pytest.raises(FailedPrecondition) as refused:
        load_config(tmp_path, env={}).database_location()
    assert f"write the URL to {tmp_path / 'keys' / 'database-url'} (mode 0600" in str(refused.value)


def test_a_password_in_node_toml_needs_an_owner_only_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, node_id="gb-nca", database="external")
    path.write_text(path.read_text() + 'database_url = "host=db user=u password=s3cret"\n')
    path.chmod(0o640)
    with pytest.raises(FailedPrecondition) as refused:
        load_config(tmp_path, env={})
    assert f"{path} holds a database password" in str(refused.value)
    assert "s3cret" not in str(refused.value)
    path.chmod(0o600)
    location = load_config(tmp_path, env={}).database_location()
    assert location == ExternalDatabase("host=db user=u password=s3cret", source=str(path))
