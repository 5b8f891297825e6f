"""`make demo`: three agency nodes (GB, US, DE) on loopback, each with its own embedded
PostgreSQL, certificates and signing keys, federated by exchanging signed peer cards. Each agency
hashes and submits its own seizure; the seizures overlap (identical files, and edited copies that
only PDQ recognises). A unit at DE then looks its seizure up through its gateway and finds GB's
and US's records, exact and near, each with its origin, under the policies those agencies set:
US withholds one category from DE, GB withholds victim status from DE. Each node then raises the
overlap flags of its agency (services/cli/demo_flags.py): ALREADY_IDENTIFIED and NEW_MATERIAL
between US's and GB's series, then, once US works on its victim and DE files copies of US's
files, CONCURRENT_WORK between US and DE; DE acknowledges and resolves that one and US sees each
state. The demo fails if a flag does not arise in time. Every node and its PostgreSQL stop
cleanly at the end.

It drives the real `hashex` command in subprocesses, exactly as operators and units type it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from services.cli import exit_codes
from services.cli.demo_agencies import AGENCIES, DE, GB, US, US_RESTRICTED, Agency
from services.cli.demo_flags import show_overlap_flags
from services.cli.demo_images import save_images
from services.cli.demo_shell import hashex, quiet, wait_until
from services.core.db.system_user_access import untraversable_directory

CONVERGE_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_node(data_dir: Path, label: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "services.cli.main", "node", "up", "--data-dir", str(data_dir)]
    print(f"\n$ hashex node up --data-dir {data_dir} &", flush=True)
    node = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert node.stderr is not None
    for line in node.stderr:
        sys.stderr.write(f"  [{label}] " + line)
        if "Ctrl-C to stop" in line:  # printed once the address files are written
            return node
    raise SystemExit(f"demo failed: node {label} exited with {node.wait()} before serving")


def stop_node(node: subprocess.Popen[str], label: str) -> None:
    node.send_signal(signal.SIGTERM)
    try:
        _, err = node.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        node.kill()
        _, err = node.communicate()
    for line in err.splitlines()[-3:]:
        sys.stderr.write(f"  [{label}] " + line + "\n")
    print(f"node {label} exited with {node.returncode}")
    if node.returncode != 0:
        raise SystemExit(f"demo failed: node {label} did not stop cleanly")


def wait_until_converged(dirs: dict[str, Path]) -> None:
    """Until every node has applied everything every peer logged (`hashex sync status`)."""
    print("\n# Waiting until every node has pulled from every peer (`hashex sync status`) ...")
    wait_until(lambda: _behind(dirs), CONVERGE_TIMEOUT_S, "not converged")
    print("every node has everything its peers may share with it")


def _behind(dirs: dict[str, Path]) -> str | None:
    """The nodes still behind a peer, or None."""
    statuses = {}
    for node_id, data_dir in dirs.items():
        done = quiet("sync", "status", "--json", "--data-dir", data_dir)
        statuses[node_id] = json.loads(done.stdout) if done.returncode == 0 else {}
    heads = {n: int(s.get("local_last_seq", 0)) for n, s in statuses.items()}
    behind = [
        f"{node_id} <- {peer_id}"
        for node_id, status in statuses.items()
        for peer_id in dirs
        if peer_id != node_id and not _caught_up(status, peer_id, heads[peer_id])
    ]
    return ", ".join(behind) if behind else None


def _caught_up(status: dict[str, Any], peer_id: str, head: int) -> bool:
    for peer in status.get("peers", []):
        if peer.get("peer_id") == peer_id:
            return (
                int(peer.get("cursor_seq", 0)) >= head
                and bool(peer.get("last_success_at"))
                and not peer.get("last_error")
            )
    return False


def set_up_agencies(root: Path) -> dict[str, Path]:
    dirs = {agency.node_id: root / agency.node_id for agency in AGENCIES}
    for node_id, data_dir in dirs.items():
        port = free_port()
        hashex(
            "node", "init", "--node-id", node_id, "--listen", "127.0.0.1:0",
            "--gateway-listen", f"127.0.0.1:{port}", "--data-dir", data_dir,
        )  # fmt: skip
        hashex("peer", "card", "--out", root / f"{node_id}.card", "--data-dir", data_dir)
    print("\n# Operators exchange peer cards out of band and pin each other's.")
    for node_id, data_dir in dirs.items():
        for other in dirs:
            if other != node_id:
                hashex(
                    "peer", "add", root / f"{other}.card", "--policy", "share-all",
                    "--data-dir", data_dir,
                )  # fmt: skip
    print("\n# Sharing policy, enforced at the source before signing:")
    hashex("policy", "set", "de-bka", "--no-victim-status", "--data-dir", dirs["gb-nca"])
    hashex(
        "policy", "set", "de-bka", "--categories", "vics-us:1", "vics-us:2", "uncategorised",
        "--data-dir", dirs["us-hsi"],
    )  # fmt: skip
    hashex("policy", "set", "gb-nca", "--desk", "--data-dir", dirs["us-hsi"])
    return dirs


def submit_seizure(root: Path, agency: Agency, data_dir: Path, folder: Path) -> None:
    node_args = ("--data-dir", data_dir)
    hashes = root / f"{agency.node_id}-seizure.jsonl"
    hashex("hash", folder, "--output", hashes, "--quiet")
    hashex("series", "set", agency.series, *node_args)
    hashex("victim", agency.series, "v1", agency.victim_status, "--desk", agency.desk, *node_args)
    hashex(
        "submit", hashes, "--category", agency.category, "--series", agency.series,
        "--case-ref", f"{agency.node_id.upper()}/2026/0001", *node_args,
    )  # fmt: skip


def md5_of(hash_file: Path, file_name: str) -> str:
    """The MD5 `hashex hash` recorded for one file of a seizure."""
    for line in hash_file.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if str(record.get("path", "")).endswith(file_name):
            return str(record["md5"])
    raise SystemExit(f"demo failed: {file_name} is not in {hash_file}")


def submit_all_seizures(root: Path, dirs: dict[str, Path]) -> None:
    print("\n# Each agency submits its own seizure; GB's and US's share six identical files.")
    submit_seizure(root, GB, dirs["gb-nca"], save_images(root / "gb", GB.seeds))
    submit_seizure(root, US, dirs["us-hsi"], save_images(root / "us", US.seeds))
    restricted = save_images(root / "us-restricted", US_RESTRICTED)
    hashex("hash", restricted, "--output", root / "us-restricted.jsonl", "--quiet")
    hashex(
        "submit", root / "us-restricted.jsonl", "--category", "vics-us:4",
        "--data-dir", dirs["us-hsi"],
    )  # fmt: skip
    submit_seizure(root, DE, dirs["de-bka"], save_images(root / "de", range(500, 503)))


def de_unit_looks_up_a_new_seizure(root: Path, de_dir: Path) -> None:
    new = root / "de-new"
    save_images(new, range(0, 4), "resized")  # GB's, edited: PDQ near matches
    save_images(new, range(14, 18), "cropped")  # US's, edited
    save_images(new, (7,))  # in both GB's and US's seizures, identical: exact matches
    save_images(new, (100, 101))  # identical to US's vics-us:4 files
    save_images(new, range(900, 903))  # nobody has these
    hashex("hash", new, "--output", root / "de-new.jsonl", "--quiet")
    print("\n# A DE unit gets its certificate from its node's CA ...")
    hashex(
        "unit", "issue", "alice", "--role", "analyst", "--out", root / "units", "--data-dir", de_dir
    )
    unit = ("--cert", root / "units" / "alice.pem", "--data-dir", de_dir)
    print(
        "\n# ... and looks a new seizure up through DE's gateway (mutual TLS). GB's and US's"
        "\n# records come from DE's own store (replicated), each with its origin. GB withholds"
        "\n# victim status from DE; US's vics-us:4 records never reached DE."
    )
    hashex("lookup", "--file", root / "de-new.jsonl", *unit)
    print(
        "\n# How much of that seizure is new to what DE holds, known exactly, or only by a near"
        "\n# match, and in which agencies' series (a deduplication report; nothing but hashes"
        "\n# leaves the unit's machine):"
    )
    hashex("dedup", root / "de-new.jsonl", *unit)
    print("\n# Asking the peers live does not get round their policy either (exit code 1):")
    restricted_md5 = md5_of(root / "de-new.jsonl", "img100.png")
    hashex("lookup", f"md5:{restricted_md5}", "--peers", *unit)
    print("\n# alice is an analyst: she may look up, not submit (refused, exit code 6, audited):")
    refused = hashex("submit", root / "de-new.jsonl", *unit, check=False)
    if refused.returncode != exit_codes.REFUSED:
        raise SystemExit(f"demo failed: an analyst's submit exited {refused.returncode}, not 6")


def run_demo(root: Path) -> None:
    dirs = set_up_agencies(root)
    nodes: dict[str, subprocess.Popen[str]] = {}
    try:
        for node_id, data_dir in dirs.items():
            nodes[node_id] = start_node(data_dir, node_id)
        submit_all_seizures(root, dirs)
        wait_until_converged(dirs)
        de_unit_looks_up_a_new_seizure(root, dirs["de-bka"])
        print("\n# At GB, a file both GB and US hold, each with its victim status:")
        shared_md5 = md5_of(root / "gb-nca-seizure.jsonl", "img006.png")
        hashex("lookup", f"md5:{shared_md5}", "--data-dir", dirs["gb-nca"])
        hashex("sync", "status", "--data-dir", dirs["de-bka"])
        show_overlap_flags(root, dirs)
    finally:
        print("\n# Stopping every node (each stops its PostgreSQL):")
        for node_id, node in nodes.items():
            stop_node(node, node_id)
    print("\n# Each node's audit log: every gateway call, hash-chained:")
    for data_dir in dirs.values():
        hashex("audit", "verify", "--data-dir", data_dir)


def make_demo_folder() -> Path:
    """A new folder for the three nodes' data directories. As root, each node's PostgreSQL runs
    as the user embedded_postgres, which must traverse every directory above a data directory,
    and a node never widens one it does not own: so the folder is made where that user can get
    to (the system temp directory, else /tmp or /var/tmp) and opened to traversal, not listing
    (0711)."""
    places = [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")]  # noqa: S108
    base = next((p for p in places if p.is_dir() and untraversable_directory(p) is None), None)
    if base is None:
        raise SystemExit(
            "demo failed: as root, the demo needs a temporary directory the user "
            "embedded_postgres can traverse; set TMPDIR to one"
        )
    root = Path(tempfile.mkdtemp(prefix="hashex-demo-", dir=base))
    if os.geteuid() == 0:
        root.chmod(0o711)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the demo folder afterwards")
    ns = parser.parse_args()
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="hashex-run-"))
    root = make_demo_folder()
    print(f"demo folder: {root}")
    try:
        run_demo(root)
        print(
            "\ndemo finished: three federated nodes, exact and near matches across borders,"
            " overlap flags raised at both agencies and their states shared."
        )
    finally:
        if ns.keep:
            print(f"demo folder kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
