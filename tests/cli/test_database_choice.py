"""One database per node, chosen once at `hashex node init`: a node that chose an external
database never gets an embedded PostgreSQL started for it (each command that opens the database
refuses, naming where the URL is expected), its URL may live in the 0600 file keys/database-url,
and a node.toml holding a password while others can read it is refused."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.node_process import HASHEX, postgres_processes
from tests.core.test_audit import _fill_log

PASSWORD = "s3cret-pw"
# Addresses nothing listens on: a command must refuse before it would dial them.
NOWHERE = "127.0.0.1:1"


def run(
    *args: str | Path, env: dict[str, str] | None = None, stdin_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`hashex ARGS` with DATABASE_URL only when `env` gives it."""
    base = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run(
        [*HASHEX, *map(str, args)],
        env={**base, **(env or {})},
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
        input=stdin_text,
    )


@pytest.fixture
def data_dir(node_data_dir: Path) -> Iterator[Path]:
    """Where a node lives; any postgres a failing test started there is killed afterwards."""
    path = node_data_dir / "node"
    yield path
    for leftover in postgres_processes(path / "pg"):
        leftover.kill()


def init(data_dir: Path, *extra: str, stdin_text: str | None = None) -> None:
    done = run(
        "node", "init", "--node-id", "gb-nca", "--listen", "127.0.0.1:0",
        "--data-dir", data_dir, *extra, stdin_text=stdin_text,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def assert_no_embedded_server(data_dir: Path) -> None:
    assert postgres_processes(data_dir / "pg") == []
    assert not (data_dir / "pg").exists()


@pytest.mark.parametrize(
    "command",
    [
        ("audit", "verify"),
        ("sync", "run", "--registry", NOWHERE, "--listen", "127.0.0.1:0"),
        ("gateway", "serve", "--registry", NOWHERE, "--sync", NOWHERE),
        ("registry", "serve"),
        ("node", "up"),
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_an_external_node_without_its_url_refuses_and_starts_no_postgres(
    data_dir: Path, command: tuple[str, ...]
) -> None:
    init(data_dir, "--database", "external")
    done = run(*command, "--data-dir", data_dir)
    assert done.returncode == 3, done.stderr
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("hashex:")]
    assert 'chooses an external database (database = "external")' in line
    assert "DATABASE_URL" in line and str(data_dir / "keys" / "database-url") in line
    assert "Traceback" not in done.stderr
    assert "intact" not in done.stdout
    assert_no_embedded_server(data_dir)


def test_the_url_in_the_0600_file_is_the_nodes_database(
    data_dir: Path, empty_database: str
) -> None:
    asyncio.run(_fill_log(empty_database, 3))
    init(
        data_dir, "--database", "external", "--database-url-file", "-",
        stdin_text=_with_password(empty_database) + "\n",
    )  # fmt: skip
    url_file = data_dir / "keys" / "database-url"
    assert url_file.stat().st_mode & 0o777 == 0o600
    assert PASSWORD not in (data_dir / "node.toml").read_text()

    done = run("audit", "verify", "--data-dir", data_dir)
    assert done.returncode == 0, done.stderr
    assert "audit log intact: 3 records" in done.stdout
    assert_no_embedded_server(data_dir)

    url_file.chmod(0o644)
    done = run("audit", "verify", "--data-dir", data_dir)
    assert done.returncode == 3
    assert f"run `chmod 600 {url_file}`" in done.stderr


def test_the_password_of_the_url_in_the_file_is_never_shown(data_dir: Path) -> None:
    url = f"postgresql://hashex:{PASSWORD}@{NOWHERE}/hashex"
    init(data_dir, "--database", "external", "--database-url-file", "-", stdin_text=url)
    done = run("node", "up", "--data-dir", data_dir)
    assert done.returncode == 3
    assert f"cannot connect to the database at postgresql://hashex:***@{NOWHERE}/hashex" in (
        done.stderr
    )
    assert "URL from " + str(data_dir / "keys" / "database-url") in done.stderr
    assert PASSWORD not in done.stderr + done.stdout
    assert_no_embedded_server(data_dir)


def test_a_node_toml_holding_a_password_is_refused_unless_owner_only(
    data_dir: Path, empty_database: str
) -> None:
    asyncio.run(_fill_log(empty_database, 2))
    init(data_dir, "--database", "external")
    config = data_dir / "node.toml"
    with config.open("a", encoding="utf-8") as file:
        file.write(f'database_url = "{_with_password(empty_database)}"\n')
    config.chmod(0o644)
    done = run("audit", "verify", "--data-dir", data_dir)
    assert done.returncode == 3
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("hashex:")]
    assert f"{config} holds a database password and is readable by group or others" in line
    assert f"`chmod 600 {config}`" in line and "keys/database-url" in line
    assert PASSWORD not in done.stderr

    config.chmod(0o600)
    done = run("audit", "verify", "--data-dir", data_dir)
    assert done.returncode == 0, done.stderr
    assert "audit log intact: 2 records" in done.stdout


def test_a_url_given_to_an_embedded_node_is_refused(data_dir: Path, empty_database: str) -> None:
    init(data_dir)
    done = run("audit", "verify", "--data-dir", data_dir, env={"DATABASE_URL": empty_database})
    assert done.returncode == 3
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("hashex:")]
    assert 'chooses the embedded database (database = "embedded"), but DATABASE_URL' in line
    assert 'set database = "external"' in line
    assert_no_embedded_server(data_dir)


def test_the_database_is_chosen_once(data_dir: Path) -> None:
    init(data_dir)
    done = run(
        "node", "init", "--node-id", "gb-nca", "--database", "external", "--data-dir", data_dir
    )
    assert done.returncode == 2
    assert "chose the embedded database when it was created; it is chosen once" in done.stderr
    done = run(
        "node", "init", "--node-id", "gb-nca", "--database-url-file", "-", "--data-dir", data_dir,
        stdin_text="postgresql://u@db/x\n",
    )  # fmt: skip
    assert done.returncode == 2
    assert not (data_dir / "keys" / "database-url").exists()
    assert 'database = "embedded"' in (data_dir / "node.toml").read_text()


def _with_password(url: str) -> str:
    """`url` with a password in its query (the test server does not ask for one: it is carried
    along, as the secret a real URL would hold)."""
    return f"{url}{'&' if '?' in url else '?'}password={PASSWORD}"
