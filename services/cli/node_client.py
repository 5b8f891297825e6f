"""How client commands find and call their node. Without a certificate: the node's admin socket
(`run/admin.sock` in the data directory, served by `hashex node up` to its own user, who is the
node's operator there), or `--node TARGET` / `HASHEX_NODE`. With `--cert` (a unit certificate
from `hashex unit issue`): the node's gateway over mutual TLS, `--gateway HOST:PORT`, else
`HASHEX_GATEWAY`, else the gateway address in the data directory. Also where gRPC errors become
exit codes and one clear line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import grpc

from hashex.v1 import registry_pb2_grpc
from services.cli import exit_codes
from services.core.config import CONFIG_FILE, NodeConfig
from services.core.errors import DATABASE_UNREACHABLE, HashexError, InvalidArgument, NotFound
from services.core.tls import channel_credentials, load_certified_key, validity_problem
from services.gateway.admin_socket import socket_target

DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "hashex"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_TIMEOUT_S = 120.0
# How the node's own UNAVAILABLE answers begin, as opposed to a connection that never reached it.
_ANSWERED_UNAVAILABLE = DATABASE_UNREACHABLE.split(" is ")[0]


class CommandFailed(Exception):
    """Ends a command with `exit_code` after printing `message` on stderr."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_data_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("HASHEX_DATA_DIR", DEFAULT_DATA_DIR)),
        help="the node's data directory (default: $HASHEX_DATA_DIR or %(default)s)",
    )


def add_node_options(parser: argparse.ArgumentParser) -> None:
    add_data_dir_option(parser)
    parser.add_argument(
        "--node",
        metavar="TARGET",
        default=os.environ.get("HASHEX_NODE"),
        help="the gRPC target to call without a certificate (default: $HASHEX_NODE, else the "
        "node's admin socket unix:DATA_DIR/run/admin.sock)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for each call (default: %(default)s)",
    )
    parser.add_argument(
        "--cert",
        type=Path,
        default=os.environ.get("HASHEX_CERT"),
        metavar="UNIT.pem",
        help="call the node's gateway over mutual TLS as this unit (default: $HASHEX_CERT); the "
        "key is UNIT.key and the node's CA ca.pem, both beside it, as `hashex unit issue` "
        "writes them",
    )
    parser.add_argument(
        "--gateway",
        metavar="HOST:PORT",
        default=os.environ.get("HASHEX_GATEWAY"),
        help="the gateway's address with --cert (default: $HASHEX_GATEWAY, else the address "
        "the running node wrote into its data directory)",
    )


def node_address(ns: argparse.Namespace) -> str:
    config = NodeConfig(node_id="unknown", data_dir=ns.data_dir)
    if getattr(ns, "cert", None):
        return _address(ns.gateway, config.gateway_address_file, ns.data_dir)
    if ns.node:
        return str(ns.node)
    if config.admin_socket_path.is_socket():
        return socket_target(config.admin_socket_path)
    _no_node(ns.data_dir)


def _address(given: str | None, address_file: Path, data_dir: Path) -> str:
    if given:
        return given
    if address_file.exists():
        return address_file.read_text(encoding="utf-8").strip()
    _no_node(data_dir)


def _no_node(data_dir: Path) -> NoReturn:
    if not (data_dir / CONFIG_FILE).exists():
        raise CommandFailed(
            exit_codes.NODE_ERROR,
            f"no node at {data_dir}: give --data-dir, or run `hashex node init`",
        )
    raise CommandFailed(
        exit_codes.NODE_ERROR,
        f"the node in {data_dir} is not running: start it with `hashex node up`",
    )


@contextmanager
def node_channel(ns: argparse.Namespace) -> Iterator[grpc.Channel]:
    """A channel to the node (its gateway with --cert); gRPC failures become CommandFailed."""
    address = node_address(ns)
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    cert: Path | None = getattr(ns, "cert", None)
    if cert:
        identity = load_certified_key(certificate_path=cert, key_path=cert.with_suffix(".key"))
        ca_path = cert.parent / "ca.pem"
        try:
            ca = ca_path.read_bytes()
        except FileNotFoundError:
            raise CommandFailed(
                exit_codes.BAD_INPUT, f"the node's CA certificate {ca_path} is missing"
            ) from None
        _check_current(identity.certificate_pem, ca, cert, ca_path)
        credentials = channel_credentials(identity, trusted_server_cas=[ca])
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    with channel:
        try:
            yield channel
        except grpc.RpcError as error:
            raise rpc_failure(error, address) from None


def _check_current(certificate_pem: bytes, ca_pem: bytes, cert: Path, ca_path: Path) -> None:
    """Refuse, before dialing, a certificate the gateway would refuse anyway as a bare "cannot
    reach": say which one is out of its validity and what to do."""
    now = datetime.now(UTC)
    problem = validity_problem(certificate_pem, now)
    if problem is not None:
        raise CommandFailed(
            exit_codes.BAD_INPUT,
            f"the certificate {cert} {problem}; ask the node's operator for a new one "
            "(`hashex unit issue NAME --out DIR`)",
        )
    problem = validity_problem(ca_pem, now)
    if problem is not None:
        raise CommandFailed(
            exit_codes.BAD_INPUT,
            f"the node's CA certificate {ca_path} {problem}; ask the node's operator for its "
            "current ca.pem",
        )


@contextmanager
def registry_stub(ns: argparse.Namespace) -> Iterator[registry_pb2_grpc.RegistryStub]:
    """A Registry stub on a channel to the node."""
    with node_channel(ns) as channel:
        yield registry_pb2_grpc.RegistryStub(channel)


def rpc_failure(error: grpc.RpcError, address: str) -> CommandFailed:
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return CommandFailed(exit_codes.BAD_INPUT, f"rejected by the node: {details}")
    if code == grpc.StatusCode.NOT_FOUND:
        return CommandFailed(exit_codes.NOT_FOUND, f"not found: {details}")
    if code == grpc.StatusCode.UNAVAILABLE and details.startswith(_ANSWERED_UNAVAILABLE):
        # The node answered: its database is out of reach (the details say what was stored).
        return CommandFailed(exit_codes.NODE_ERROR, f"the node is unavailable: {details}")
    server_problem = (
        _server_certificate_problem(details) if code == grpc.StatusCode.UNAVAILABLE else None
    )
    if server_problem is not None:
        return CommandFailed(
            exit_codes.NODE_ERROR,
            f"the node's gateway at {address} presents a certificate that {server_problem}; "
            "its operator renews it with `hashex node renew-cert` (no restart needed)",
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return CommandFailed(
            exit_codes.NODE_ERROR,
            f"cannot reach the node at {address}: is it running (`hashex node up`)? With "
            "--cert, the gateway also refuses certificates its node did not issue",
        )
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return CommandFailed(exit_codes.REFUSED, f"refused by the node ({code.name}): {details}")
    return CommandFailed(exit_codes.NODE_ERROR, f"the node answered {code.name}: {details}")


# What grpc (BoringSSL) says when the server's certificate is out of its validity, as a real
# handshake reports it (tests/cli/test_cert_renewal.py).
_SERVER_CERTIFICATE_PROBLEMS = {
    "certificate has expired": "has expired",
    "certificate is not yet valid": "is not valid yet (is either machine's clock wrong?)",
}


def _server_certificate_problem(details: str) -> str | None:
    if "CERTIFICATE_VERIFY_FAILED" not in details:
        return None
    for reported, meaning in _SERVER_CERTIFICATE_PROBLEMS.items():
        if reported in details:
            return meaning
    return None


def run_command(body: Callable[[argparse.Namespace], int], ns: argparse.Namespace) -> int:
    """Run `body(ns)`, turning failures into one line on stderr and the matching exit code."""
    try:
        return body(ns)
    except CommandFailed as failure:
        return _fail(str(failure), failure.exit_code)
    except InvalidArgument as error:
        return _fail(str(error), exit_codes.BAD_INPUT)
    except NotFound as error:
        return _fail(str(error), exit_codes.NOT_FOUND)
    except HashexError as error:
        return _fail(str(error), exit_codes.NODE_ERROR)


def _fail(message: str, exit_code: int) -> int:
    print(f"hashex: {message}", file=sys.stderr)
    return exit_code
