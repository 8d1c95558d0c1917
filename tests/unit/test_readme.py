"""The README walkthrough runs on a stock Debian: what it computes, it computes here."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_idempotency_key_command_prints_a_fresh_uuid() -> None:
    # uuidgen is not on a stock Debian: the header silently went out empty.
    commands = re.findall(r'Idempotency-Key: \$\((.+?)\)"', README.read_text())
    assert commands, "the walkthrough sends an Idempotency-Key"
    for command in commands:
        keys = set()
        for _ in range(2):
            result = subprocess.run(
                ["bash", "-c", command], capture_output=True, text=True, timeout=30
            )
            assert result.returncode == 0, result.stderr
            keys.add(str(uuid.UUID(result.stdout.strip())))
        assert len(keys) == 2, "each send gets its own key"
