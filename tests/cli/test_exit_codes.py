"""Exit codes that mean one thing each, and no traceback for a reader that went away."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.cli import exit_codes
from services.cli.demo_images import synthetic_image


def test_a_closed_output_ends_the_command_quietly(tmp_path: Path) -> None:
    """`hashex ... | head` closes the pipe: code 141 as a shell reports it, no traceback."""
    synthetic_image(1).save(tmp_path / "a.png")
    command = [sys.executable, "-m", "services.cli.main", "hash", str(tmp_path), "--quiet"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        assert child.stdout is not None and child.stderr is not None
        child.stdout.close()  # before the command writes anything (it is still importing)
        errors = child.stderr.read().decode()
        assert child.wait(timeout=60) == exit_codes.OUTPUT_CLOSED
    assert "Traceback" not in errors and "BrokenPipeError" not in errors


def test_each_exit_code_is_distinct_and_documented() -> None:
    codes = {
        name: value
        for name, value in vars(exit_codes).items()
        if name.isupper() and isinstance(value, int)
    }
    assert len(set(codes.values())) == len(codes)
    for value in codes.values():
        assert f"  {value}  " in exit_codes.EPILOG
