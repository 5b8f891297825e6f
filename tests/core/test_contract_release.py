"""`make lint` holds the contract to its last release (proto/releases, CONTRACT_RELEASE in the
Makefile) with `buf breaking`. The check itself: the contract as it is passes, and removing a
field from a copy of it is refused, naming the field."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUF = Path(sys.executable).with_name("buf")


def _release_image() -> Path:
    makefile = (ROOT / "Makefile").read_text()
    found = re.search(r"^CONTRACT_RELEASE = (\S+)$", makefile, re.MULTILINE)
    assert found, "the Makefile names the contract's last release"
    return ROOT / "proto" / "releases" / f"{found.group(1)}.binpb"


def _breaking(proto: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), "breaking", "--against", str(_release_image())],
        cwd=proto,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_contract_keeps_its_last_release() -> None:
    result = _breaking(ROOT / "proto")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_removed_field_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", copy, ignore=shutil.ignore_patterns("*.py", "*.pyi"))
    common = copy / "hashex" / "v1" / "common.proto"
    text = common.read_text()
    field = re.search(r"^\s+string value = (\d+);.*$", text, re.MULTILINE)
    assert field, "common.proto's Signal has a string value field"
    common.write_text(text.replace(field.group(0), f"  reserved {field.group(1)};", 1))
    result = _breaking(copy)
    assert result.returncode != 0
    assert "value" in result.stdout + result.stderr
