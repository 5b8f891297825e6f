"""The node's admin socket: the Unix domain socket `run/admin.sock` in the data directory, where
the node's own `hashex` commands reach it on its machine (there is no plaintext TCP port).

Who may open the socket is decided by the file system: `run/` is 0700 and the socket 0600, both
owned by the user that runs the node, so a caller on it is that node's operator. Each call runs
as the local operator (role `admin`: every method the node serves, any record of the node) and
passes through the gateway's own checks (services.gateway.wrapper): request size and work
limits, deadlines, and one audit record per call in the same chain as the gateway's calls, under
the caller `spiffe://hashex/node/<id>/operator/admin-socket`.

grpc replaces an existing socket file when it binds, which would silently take the socket from
a node already running: so the path is probed first, and a live socket refuses the start.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

from services.core.audit.recorder import AuditRecorder
from services.core.caller import Caller
from services.core.config import NodeConfig
from services.core.errors import FailedPrecondition
from services.core.server import RunningServer, ServiceBinding, build_server
from services.gateway.app import gateway_checks

LOCAL_OPERATOR_NAME = "admin-socket"
# sun_path holds 108 bytes on Linux, the last one a NUL.
MAX_SOCKET_PATH_BYTES = 107


class LocalOperator:
    """The admin socket's verifier: every caller is the node's own operator."""

    def __init__(self, node_id: str) -> None:
        self._caller = Caller(
            node_id=node_id, kind="operator", name=LOCAL_OPERATOR_NAME, role="admin", fingerprint=""
        )

    def verify(self, auth_context: Mapping[str, Iterable[bytes]]) -> Caller:
        return self._caller


def socket_target(path: Path) -> str:
    """The gRPC target of a socket path (`unix:` and an absolute path)."""
    return f"unix:{path.resolve()}"


async def start_admin_socket(
    config: NodeConfig,
    bindings: Sequence[ServiceBinding],
    *,
    recorder: AuditRecorder,
    tracer_provider: TracerProvider,
) -> RunningServer:
    """Serve `bindings` on the node's admin socket behind the gateway's checks; FailedPrecondition
    when the path is too long for a socket or another process serves it already."""
    path = config.admin_socket_path
    if len(os.fsencode(path.resolve())) > MAX_SOCKET_PATH_BYTES:
        raise FailedPrecondition(
            f"the admin socket path {path} is longer than the {MAX_SOCKET_PATH_BYTES} bytes a Unix "
            "socket allows; move the node's data directory to a shorter path"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    _remove_stale(path)
    server = await build_server(
        listen=socket_target(path),
        services=bindings,
        tracer_provider=tracer_provider,
        max_message_bytes=max(config.max_message_bytes, 2 * config.max_request_bytes),
        interceptors=[
            gateway_checks(config, LocalOperator(config.node_id), recorder=recorder),
        ],
    )
    os.chmod(path, 0o600)
    return server


def _remove_stale(path: Path) -> None:
    """Remove a socket left by a node that is gone; refuse to take one that is served."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise FailedPrecondition(f"{path} exists and is not a socket; remove it to start the node")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    finally:
        probe.close()
    raise FailedPrecondition(
        f"another process serves {path}: this node is already running (`hashex node status`); "
        "stop it first"
    )
