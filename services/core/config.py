"""The node's one typed configuration: read once at start from the node's `node.toml` and the
environment, validated with clear errors, secrets masked when printed.

Precedence: environment (`HASHEX_*`, `DATABASE_URL`) over `node.toml` over defaults. Where the
database lives is the node's own choice, made at `hashex node init` (`database = "embedded"` or
`"external"`, see services/core/db/location.py); a node.toml holding a database password is
refused unless only its owner can read it.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from services.core.db.location import (
    DATABASE_URL_ENV,
    DATABASE_URL_FILE,
    EMBEDDED,
    DatabaseChoice,
    DatabaseLocation,
    locate_database,
)
from services.core.db.pool import has_password, mask_database_url
from services.core.errors import FailedPrecondition, InvalidArgument

CONFIG_FILE = "node.toml"
# Settings of earlier releases and what took their place.
_REPLACED = {
    "rate_limit_per_s": "rate_limit_hashes_per_s",
    "rate_limit_burst": "rate_limit_hashes_burst",
}
_REMOVED = {
    "allow_plaintext_non_loopback": "the node's own commands use its admin socket (run/admin.sock) "
    "and a registry run apart needs the gateway's signed caller on every call, so no plaintext "
    "port has anything to allow",
}
NODE_ID_PATTERN = re.compile(r"[a-z][a-z0-9-]{1,62}")
DEFAULT_LISTEN = "127.0.0.1:7700"
# The gateway is mutual TLS, so it may listen anywhere; loopback until the operator says otherwise.
DEFAULT_GATEWAY_LISTEN = "127.0.0.1:7443"


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    data_dir: Path
    # host:port of the registry's internal port when it runs apart (`hashex registry serve`);
    # every call on it but health needs the caller the node's gateway signed.
    listen: str = DEFAULT_LISTEN
    # "embedded": the PostgreSQL in `data_dir/pg`; "external": the server at `database_url`
    # (from DATABASE_URL, or keys/database-url, or this file when only its owner can read it).
    database: DatabaseChoice = EMBEDDED
    database_url: str | None = field(default=None, repr=False)
    # Where database_url came from (DATABASE_URL or node.toml's path); not a setting.
    database_url_source: str = field(default="", repr=False)
    pdq_default_max_distance: int = 31
    max_message_bytes: int = 16 * 1024 * 1024
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"
    # host:port of the gateway (mutual TLS, the node's only public port).
    gateway_listen: str = DEFAULT_GATEWAY_LISTEN
    # host:port peers and units dial (written into the peer card); empty: gateway_listen.
    gateway_endpoint: str = ""
    # Work each caller may ask of the gateway per second, and the burst allowed: each hash looked
    # up, media submitted or id retracted or changed counts one, and each call one more.
    rate_limit_hashes_per_s: float = 50_000.0
    rate_limit_hashes_burst: int = 100_000
    # Calls of one caller running at once.
    max_calls_in_flight_per_caller: int = 8
    # Largest single request message the gateway accepts.
    max_request_bytes: int = 4 * 1024 * 1024
    # Longest a unary call through the gateway may run, and a Pull stream.
    call_deadline_s: float = 60.0
    pull_deadline_s: float = 1200.0
    # How long a caught-up pull stays open for new entries (both the puller's ask and this
    # origin's cap; below pull_deadline_s), and the keep-alive interval while it is idle.
    pull_hold_s: float = 900.0
    pull_keepalive_s: float = 30.0
    # Pause between pulls from a peer that is up to date, and the longest backoff after errors.
    pull_interval_s: float = 2.0
    pull_backoff_max_s: float = 60.0
    # Series linkage (docs/linkage.md): two series are linked when at least this many of the
    # smaller one's media, and this fraction of it, link to the other; PDQ pairs link up to
    # this distance (at most 31); queued changes wait this long for the PDQ index to hold them.
    linkage_min_linked_media: int = 3
    linkage_min_linked_fraction: float = 0.2
    linkage_pdq_max_distance: int = 31
    linkage_settle_s: float = 1.0

    @property
    def case_key_path(self) -> Path:
        return self.data_dir / "keys" / "case.key"

    @property
    def signing_keys_dir(self) -> Path:
        """`ed25519_<n>.key` files, one per key version; the highest is current."""
        return self.data_dir / "keys" / "signing"

    @property
    def tls_dir(self) -> Path:
        """ca.pem / ca.key (the node CA) and node.pem / node.key (the gateway's identity)."""
        return self.data_dir / "tls"

    @property
    def peers_dir(self) -> Path:
        """Pinned peer cards `<peer-id>.card` and the deny-list `denied.txt`."""
        return self.data_dir / "peers"

    @property
    def policy_dir(self) -> Path:
        """Sharing policy per peer, `<peer-id>.toml`."""
        return self.data_dir / "policy"

    @property
    def gateway_address_file(self) -> Path:
        """Written by `hashex node up` with the gateway's bound address."""
        return self.data_dir / "run" / "gateway.addr"

    @property
    def sync_address_file(self) -> Path:
        """Written by `hashex sync run` (the services apart) with its internal port's address,
        read by `hashex sync status` and the other sync admin commands."""
        return self.data_dir / "run" / "sync.addr"

    @property
    def address_file(self) -> Path:
        """Written by `hashex registry serve` (the registry run apart) with its bound address."""
        return self.data_dir / "run" / "registry.addr"

    @property
    def admin_socket_path(self) -> Path:
        """The Unix socket `hashex node up` serves the node's own commands on (owner only)."""
        return self.data_dir / "run" / "admin.sock"

    @property
    def config_file(self) -> Path:
        return self.data_dir / CONFIG_FILE

    def database_location(self) -> DatabaseLocation:
        """Where this node's database is, as chosen in node.toml; FailedPrecondition naming
        where the URL is expected (an external database without one) or what contradicts the
        choice. Never an embedded database for a node that chose an external one."""
        return locate_database(
            choice=self.database,
            data_dir=self.data_dir,
            config_file=self.config_file,
            url=self.database_url,
            url_source=self.database_url_source,
        )

    def masked(self) -> dict[str, str]:
        """Every setting as text for the start-up log, with the database password hidden."""
        shown = {f.name: str(getattr(self, f.name)) for f in fields(self)}
        del shown["database_url_source"]
        if self.database_url:
            shown["database_url"] = (
                f"{mask_database_url(self.database_url)} (from {self.database_url_source})"
            )
        elif self.database == EMBEDDED:
            shown["database_url"] = "none (embedded)"
        else:
            shown["database_url"] = f"from {DATABASE_URL_FILE} when the database opens"
        return shown


def require_node_material(config: NodeConfig, *, internal_key: bool = False) -> None:
    """Refuse to start, naming what is missing, when the data directory lacks the keys and
    certificates a federating node needs (for example one created by an earlier release)."""
    needed = [
        config.case_key_path,
        config.tls_dir / "ca.pem",
        config.tls_dir / "ca.key",
        config.tls_dir / "node.pem",
        config.tls_dir / "node.key",
    ]
    if internal_key:
        needed.append(config.data_dir / "keys" / "internal.key")
    missing = [str(p.relative_to(config.data_dir)) for p in needed if not p.exists()]
    if not any(config.signing_keys_dir.glob("ed25519_*.key")):
        missing.append(str(config.signing_keys_dir.relative_to(config.data_dir)) + "/ed25519_1.key")
    if missing:
        raise FailedPrecondition(
            f"{config.data_dir} lacks {', '.join(missing)}; run `hashex node init --node-id "
            f"{config.node_id} --data-dir {config.data_dir}` again: it creates only what is missing"
        )


def check_node_id(node_id: str) -> str:
    if not NODE_ID_PATTERN.fullmatch(node_id):
        raise InvalidArgument(
            f"node id {node_id!r} must be 2-63 characters: lowercase letters, digits and '-', "
            "starting with a letter (for example gb-nca)"
        )
    return node_id


def check_listen(listen: str) -> str:
    """HOST:PORT, for the internal ports of services run apart: plaintext, but every call on
    them except health must carry the caller the node's gateway signed (see
    services.core.forwarded_caller), so they may listen on the node's internal network."""
    _, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(f"listen address {listen!r} must be HOST:PORT")
    return listen


def load_config(data_dir: Path, env: Mapping[str, str] | None = None) -> NodeConfig:
    """The configuration of the node whose data directory is `data_dir`."""
    env = os.environ if env is None else env
    path = data_dir / CONFIG_FILE
    if not path.exists():
        raise FailedPrecondition(
            f"{data_dir} is not a hashex node (no {CONFIG_FILE}); run `hashex node init` first"
        )
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{path}: {exc}") from None
    in_file: dict[str, Any] = raw.get("node", {})
    _refuse_readable_password(path, in_file.get("database_url"))
    from_env = _from_env(env)
    url_source = DATABASE_URL_ENV if "database_url" in from_env else str(path)
    return _from_values(data_dir, {**in_file, **from_env}, path, url_source=url_source)


def _refuse_readable_password(path: Path, url: object) -> None:
    """A database password in node.toml is a secret in a file others may read (node.toml is
    created 0644): refused, naming the file and the fix, unless the file is owner-only."""
    if not isinstance(url, str) or not has_password(url):
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise FailedPrecondition(
            f"{path} holds a database password and is readable by group or others (mode "
            f"{mode:o}): move the URL to {path.parent / DATABASE_URL_FILE} (mode 0600) or "
            f"DATABASE_URL and remove database_url from {path.name}, or run `chmod 600 {path}`"
        )


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if env.get(DATABASE_URL_ENV):
        values["database_url"] = env[DATABASE_URL_ENV]
    if env.get("HASHEX_LISTEN"):
        values["listen"] = env["HASHEX_LISTEN"]
    if env.get("HASHEX_GATEWAY_LISTEN"):
        values["gateway_listen"] = env["HASHEX_GATEWAY_LISTEN"]
    if env.get("HASHEX_LOG_LEVEL"):
        values["log_level"] = env["HASHEX_LOG_LEVEL"]
    return values


def _from_values(
    data_dir: Path, values: dict[str, Any], source: Path, *, url_source: str
) -> NodeConfig:
    known = {f.name for f in fields(NodeConfig)} - _NOT_SETTINGS
    for old, why in _REMOVED.items():
        if old in values:
            raise InvalidArgument(f"{source}: {old} was removed: {why}; delete the line")
    for old, new in _REPLACED.items():
        if old in values:
            raise InvalidArgument(
                f"{source}: {old} was replaced by {new}: rate limits count work (each hash asked, "
                "media submitted or id retracted is one, each call one more), not calls"
            )
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidArgument(f"{source}: unknown setting(s) {', '.join(unknown)}")
    if "node_id" not in values:
        raise InvalidArgument(f"{source}: node_id is missing")
    typed = _typed(values, source)
    config = NodeConfig(
        data_dir=data_dir.resolve(),
        database_url_source=url_source if typed.get("database_url") else "",
        **typed,
    )
    check_node_id(config.node_id)
    check_listen(config.listen)
    _check_address("gateway_listen", config.gateway_listen, source)
    if config.gateway_endpoint:
        _check_address("gateway_endpoint", config.gateway_endpoint, source)
    positive = (
        "rate_limit_hashes_per_s",
        "rate_limit_hashes_burst",
        "max_calls_in_flight_per_caller",
        "max_request_bytes",
        "call_deadline_s",
    )
    pulls = ("pull_deadline_s", "pull_interval_s", "pull_backoff_max_s", "pull_keepalive_s")
    for name in (*positive, *pulls):
        if not getattr(config, name) > 0:
            raise InvalidArgument(f"{source}: {name} must be greater than 0")
    if not 0 <= config.pull_hold_s < config.pull_deadline_s:
        raise InvalidArgument(
            f"{source}: pull_hold_s must be at least 0 and below pull_deadline_s "
            f"({config.pull_deadline_s:g})"
        )
    if not 0 <= config.pdq_default_max_distance <= 64:
        raise InvalidArgument(f"{source}: pdq_default_max_distance must be 0-64")
    _check_linkage(config, source)
    if config.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise InvalidArgument(f"{source}: log_level must be DEBUG, INFO, WARNING or ERROR")
    return config


def _check_linkage(config: NodeConfig, source: Path) -> None:
    if config.linkage_min_linked_media < 1:
        raise InvalidArgument(f"{source}: linkage_min_linked_media must be at least 1")
    if not 0.0 < config.linkage_min_linked_fraction <= 1.0:
        raise InvalidArgument(f"{source}: linkage_min_linked_fraction must be above 0, at most 1")
    if not 0 <= config.linkage_pdq_max_distance <= 31:
        raise InvalidArgument(f"{source}: linkage_pdq_max_distance must be 0-31")
    if not 0 <= config.linkage_settle_s <= 60:
        raise InvalidArgument(f"{source}: linkage_settle_s must be 0-60")


# NodeConfig's fields that are not node.toml settings.
_NOT_SETTINGS = {"data_dir", "database_url_source"}


def _settings_model() -> type[BaseModel]:
    """NodeConfig's settings as a pydantic model: each of its type, nothing converted (a text
    "no" is not a boolean, 7700 is not an address), whole numbers accepted as seconds."""
    hints = get_type_hints(NodeConfig)
    settings: dict[str, Any] = {
        f.name: (hints[f.name], f.default)
        for f in fields(NodeConfig)
        if f.name not in _NOT_SETTINGS
    }
    return create_model(
        "NodeSettings", __config__=ConfigDict(strict=True, extra="forbid"), **settings
    )


_SETTINGS = _settings_model()
# What each pydantic error type means, in the words of a node.toml's author.
_EXPECTED = {
    "bool_type": "expected a boolean (true or false, unquoted)",
    "string_type": "expected a string (in quotes)",
    "float_type": "expected a number",
    "int_type": "expected a whole number",
    "missing": "missing",
}
# Never quoted back in an error: it may carry a password.
_SECRET_SETTINGS = {"database_url"}


def _typed(values: dict[str, Any], source: Path) -> dict[str, Any]:
    """`values` checked whole against NodeConfig's types; InvalidArgument names every setting
    that is not of its type, and the type it needs."""
    try:
        settings = _SETTINGS.model_validate(values)
    except ValidationError as invalid:
        problems = []
        for error in invalid.errors():
            key = ".".join(str(part) for part in error["loc"][:1])
            expected = _EXPECTED.get(error["type"], error["msg"])
            if error["type"] == "literal_error":
                expected = f"expected {error.get('ctx', {}).get('expected', 'another value')}"
            shown = "" if key in _SECRET_SETTINGS else f", not {error['input']!r}"
            problems.append(f"{key}: {expected}{shown}")
        raise InvalidArgument(f"{source}: {'; '.join(dict.fromkeys(problems))}") from None
    return settings.model_dump(exclude_unset=True)


def _check_address(name: str, address: str, source: Path) -> None:
    _, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(f"{source}: {name} {address!r} must be HOST:PORT")


def write_config(
    data_dir: Path,
    *,
    node_id: str,
    listen: str = DEFAULT_LISTEN,
    gateway_listen: str = DEFAULT_GATEWAY_LISTEN,
    gateway_endpoint: str = "",
    database: DatabaseChoice = EMBEDDED,
) -> Path:
    """Write a fresh `node.toml` (the operator edits it afterwards)."""
    path = data_dir / CONFIG_FILE
    path.write_text(
        "# hashex node configuration; environment variables HASHEX_LISTEN,\n"
        "# HASHEX_GATEWAY_LISTEN and HASHEX_LOG_LEVEL override these.\n"
        "[node]\n"
        f'node_id = "{check_node_id(node_id)}"\n'
        f'listen = "{listen}"\n'
        "# The gateway: mutual TLS, the port peers and units use.\n"
        f'gateway_listen = "{gateway_listen}"\n'
        + (
            f'gateway_endpoint = "{gateway_endpoint}"\n'
            if gateway_endpoint
            else '# gateway_endpoint = "hashex.example.org:7443"  (what peers dial)\n'
        )
        + "pdq_default_max_distance = 31\n"
        '# Where the database lives, chosen at `hashex node init`: "embedded" (PostgreSQL in\n'
        '# pg/, started by the node) or "external" (URL from DATABASE_URL or keys/database-url,\n'
        "# mode 0600; never a password here unless this file is mode 0600).\n"
        f'database = "{database}"\n',
        encoding="utf-8",
    )
    return path
