"""A hashex client in Python on the committed stubs (`hashex.v1`, installed with hashex): over
mutual TLS it asks the node for its statistics, then looks up an MD5, and prints one JSON line
per answer. A refused call prints its status code, message and the google.rpc.BadRequest field
violations carried in `grpc-status-details-bin`.

    python lookup.py --target HOST:PORT --ca node-ca.pem --cert unit.pem --key unit.key --md5 HEX

Exit codes: 0 every call answered, 1 a call was refused (printed), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hashex.v1 import common_pb2, registry_pb2, registry_pb2_grpc

TIMEOUT_S = 10.0


def violations(call: grpc.Call) -> list[dict[str, str]]:
    status = rpc_status.from_call(call)
    found = []
    for detail in status.details if status is not None else []:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            found += [
                {"field": v.field, "description": v.description}
                for v in bad_request.field_violations
            ]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("target", "ca", "cert", "key", "md5"):
        parser.add_argument(f"--{name}", required=True)
    args = parser.parse_args(argv)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(args.ca).read_bytes(),
        private_key=Path(args.key).read_bytes(),
        certificate_chain=Path(args.cert).read_bytes(),
    )
    with grpc.secure_channel(args.target, credentials) as channel:
        registry = registry_pb2_grpc.RegistryStub(channel)
        try:
            stats = registry.GetStats(registry_pb2.GetStatsRequest(), timeout=TIMEOUT_S)
            print(
                json.dumps(
                    {
                        "call": "GetStats",
                        "node_id": stats.node_id,
                        "media_count": str(stats.media_count),
                    }
                )
            )
            md5 = common_pb2.Signal(algorithm=common_pb2.HASH_ALGORITHM_MD5, value=args.md5)
            found = registry.Lookup(registry_pb2.LookupRequest(signals=[md5]), timeout=TIMEOUT_S)
            print(json.dumps({"call": "Lookup", "results": len(found.results)}))
            return 0
        except grpc.RpcError as error:
            call = cast(grpc.Call, error)  # what a refused call raises is also its Call
            print(
                json.dumps(
                    {
                        "refused": call.code().name,
                        "message": call.details(),
                        "violations": violations(call),
                    }
                )
            )
            return 1


if __name__ == "__main__":
    sys.exit(main())
