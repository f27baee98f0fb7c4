"""``make soak`` itself, in a short run: it drives every kind of traffic and ends on a PASS line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_soak_passes_and_prints_its_table() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--minutes", "0.4", "--every", "8"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "soak: PASS" in out and "rss MB" in out
    for kind in ("load 200", "meta 200", "slow reader", "malformed", "hostile 400", "hostile 401"):
        assert kind in out, kind
