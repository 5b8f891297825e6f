"""`make demo`: one node on an embedded PostgreSQL, a synthetic seizure hashed, submitted and
looked up again after typical edits (resize, re-encode, crop), then a clean stop.

It drives the real `hashex` command in subprocesses, exactly as a unit would type it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from services.cli.demo_images import cropped, resized, synthetic_image

ORIGINALS = 36
EDITED = 12
UNRELATED = 4
UNCHANGED = 2


def hashex(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "services.cli.main", *map(str, args)]
    print("\n$ hashex " + shlex.join(map(str, args)), flush=True)
    done = subprocess.run(command, text=True, capture_output=True, check=False)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    if check and done.returncode not in (0, 1):
        raise SystemExit(f"demo failed: hashex {args[0]} exited {done.returncode}")
    return done


def write_seizures(root: Path) -> tuple[Path, Path]:
    seized, later = root / "seizure-1", root / "seizure-2"
    seized.mkdir()
    later.mkdir()
    for seed in range(ORIGINALS):
        synthetic_image(seed).save(seized / f"img{seed:03d}.png")
    (seized / "notes.txt").write_text("not an image: reported and skipped\n")
    edits = (
        ("resized", lambda im: resized(im)),
        ("reencoded", lambda im: im),
        ("cropped", lambda im: cropped(im)),
    )
    for seed in range(EDITED):
        name, edit = edits[seed % len(edits)]
        edit(synthetic_image(seed)).save(later / f"{name}-{seed:03d}.jpg", quality=40)
    for seed in range(UNCHANGED):  # the very same files: exact matches on every hash
        shutil.copy(seized / f"img{seed:03d}.png", later / f"copy-{seed:03d}.png")
    for seed in range(1000, 1000 + UNRELATED):
        synthetic_image(seed).save(later / f"unrelated-{seed}.jpg", quality=85)
    return seized, later


def start_node(data_dir: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "services.cli.main", "node", "up", "--data-dir", str(data_dir)]
    print(f"\n$ hashex node up --data-dir {data_dir} &", flush=True)
    node = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert node.stderr is not None
    for line in node.stderr:
        sys.stderr.write("  [node] " + line)
        if "serving on" in line:
            return node
    raise SystemExit(f"demo failed: the node exited with {node.wait()} before serving")


def stop_node(node: subprocess.Popen[str]) -> None:
    print("\n$ kill -TERM <node>   # clean stop: drains calls, stops PostgreSQL", flush=True)
    node.send_signal(signal.SIGTERM)
    _, err = node.communicate(timeout=60)
    for line in err.splitlines():
        sys.stderr.write("  [node] " + line + "\n")
    print(f"node exited with {node.returncode}")
    if node.returncode != 0:
        raise SystemExit("demo failed: the node did not stop cleanly")


def run_demo(root: Path) -> None:
    data_dir = root / "node-gb"
    hashex(
        "node", "init", "--node-id", "demo-gb", "--listen", "127.0.0.1:0", "--data-dir", data_dir
    )
    node = start_node(data_dir)
    try:
        node_args = ("--data-dir", data_dir)
        seized, later = write_seizures(root)
        hashex("hash", seized, "--output", root / "seizure-1.jsonl", "--quiet")
        hashex("series", "set", "op-demo", "--name", "Demo series", *node_args)
        hashex("victim", "op-demo", "v1", "identified", "--desk", "DEMO victim-ID desk", *node_args)
        submit_seizure_1 = (
            "submit",
            root / "seizure-1.jsonl",
            "--category",
            "vics-us:1",
            "--series",
            "op-demo",
            "--case-ref",
            "DEMO/2026/0001",
            "--exhibit-ref",
            "EX-1",
            *node_args,
        )
        hashex(*submit_seizure_1)
        print("\n# The same seizure again: idempotent, nothing new is stored.")
        hashex(*submit_seizure_1)
        print(
            "\n# A later seizure: two identical copies, edited copies (resized, re-encoded,"
            "\n# cropped) and four unrelated files."
        )
        hashex("hash", later, "--output", root / "seizure-2.jsonl", "--quiet")
        hashex("lookup", "--file", root / "seizure-2.jsonl", *node_args)
        first = (root / "seizure-1.jsonl").read_text().splitlines()[0]
        md5 = first.split('"md5": "')[1].split('"')[0]
        print("\n# One exact lookup by MD5, as JSON:")
        hashex("lookup", f"md5:{md5}", "--format", "json", *node_args)
        print("\n# Bad input is refused with exit code 2 and stores nothing:")
        bad = hashex("lookup", "md5:1234", *node_args, check=False)
        print(f"exit code {bad.returncode}")
        hashex("stats", *node_args)
    finally:
        stop_node(node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the demo folder afterwards")
    ns = parser.parse_args()
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="hashex-run-"))
    root = Path(tempfile.mkdtemp(prefix="hashex-demo-"))
    try:
        run_demo(root)
        print("\ndemo finished: one node, exact and near matches, clean stop.")
    finally:
        if ns.keep:
            print(f"demo folder kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
