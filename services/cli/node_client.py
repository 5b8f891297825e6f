"""How client commands find and call their node: `--node HOST:PORT`, else `HASHEX_NODE`, else the
address that `hashex node up` wrote into the data directory. Also where gRPC errors become exit
codes and one clear line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from hashex.v1 import registry_pb2_grpc
from services.cli import exit_codes
from services.core.config import CONFIG_FILE, NodeConfig
from services.core.errors import HashexError, InvalidArgument

DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "hashex"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_TIMEOUT_S = 120.0


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
        metavar="HOST:PORT",
        default=os.environ.get("HASHEX_NODE"),
        help="the node's registry address (default: $HASHEX_NODE, else the address the running "
        "node wrote into its data directory)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for each call (default: %(default)s)",
    )


def node_address(ns: argparse.Namespace) -> str:
    if ns.node:
        return str(ns.node)
    data_dir: Path = ns.data_dir
    address_file = NodeConfig(node_id="unknown", data_dir=data_dir).address_file
    if address_file.exists():
        return address_file.read_text(encoding="utf-8").strip()
    if not (data_dir / CONFIG_FILE).exists():
        raise CommandFailed(
            exit_codes.NODE_ERROR,
            f"no node at {data_dir}: give --node HOST:PORT or --data-dir, "
            "or run `hashex node init`",
        )
    raise CommandFailed(
        exit_codes.NODE_ERROR,
        f"the node in {data_dir} is not running: start it with `hashex node up`",
    )


@contextmanager
def registry_stub(ns: argparse.Namespace) -> Iterator[registry_pb2_grpc.RegistryStub]:
    """A stub on a channel to the node; gRPC failures become CommandFailed."""
    address = node_address(ns)
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    with grpc.insecure_channel(address, options=options) as channel:
        try:
            yield registry_pb2_grpc.RegistryStub(channel)
        except grpc.RpcError as error:
            raise rpc_failure(error, address) from None


def rpc_failure(error: grpc.RpcError, address: str) -> CommandFailed:
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return CommandFailed(exit_codes.BAD_INPUT, f"rejected by the node: {details}")
    if code == grpc.StatusCode.UNAVAILABLE:
        return CommandFailed(
            exit_codes.NODE_ERROR,
            f"cannot reach the node at {address}: is it running (`hashex node up`)?",
        )
    return CommandFailed(exit_codes.NODE_ERROR, f"the node answered {code.name}: {details}")


def run_command(body: Callable[[argparse.Namespace], int], ns: argparse.Namespace) -> int:
    """Run `body(ns)`, turning failures into one line on stderr and the matching exit code."""
    try:
        return body(ns)
    except CommandFailed as failure:
        return _fail(str(failure), failure.exit_code)
    except InvalidArgument as error:
        return _fail(str(error), exit_codes.BAD_INPUT)
    except HashexError as error:
        return _fail(str(error), exit_codes.NODE_ERROR)


def _fail(message: str, exit_code: int) -> int:
    print(f"hashex: {message}", file=sys.stderr)
    return exit_code
