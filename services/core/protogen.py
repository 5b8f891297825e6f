"""Generate the Python stubs of the contract in proto/ and check that the committed ones are fresh.

The stubs are committed beside each .proto so that integrators and the node import the exact
code that was reviewed; `make proto` rewrites them and a test fails when they are stale.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.joinpath("hashex").rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Run protoc (from grpcio-tools) with the mypy-protobuf plug-ins into `out_dir`."""
    include = Path(protoc.__file__).parent / "_proto"
    bin_dir = Path(sys.executable).parent
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")


def generated_files(root: Path) -> set[Path]:
    return {
        p.relative_to(root)
        for p in root.rglob("*")
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def stale_files() -> list[str]:
    """Names of generated files that differ from a fresh generation (empty when fresh)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        generate(fresh_root)
        fresh = generated_files(fresh_root)
        committed = generated_files(PROTO_ROOT)
        differing = {
            p for p in fresh & committed if not filecmp.cmp(fresh_root / p, PROTO_ROOT / p, False)
        }
        return sorted(str(p) for p in (fresh ^ committed) | differing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="regenerate the committed stubs")
    parser.add_argument("--check", action="store_true", help="fail when the stubs are stale")
    ns = parser.parse_args()
    if ns.write:
        generate(PROTO_ROOT)
        for package in {p.parent for p in proto_files()} | {PROTO_ROOT / "hashex"}:
            package.joinpath("__init__.py").touch()
            package.joinpath("py.typed").touch()
    if ns.check:
        stale = stale_files()
        if stale:
            raise SystemExit("stale generated stubs (run `make proto`): " + ", ".join(stale))


if __name__ == "__main__":
    main()
