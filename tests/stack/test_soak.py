"""``make soak`` itself, in a short run: it drives every kind of traffic, samples every worker, and judges.

Thirty seconds is no steady state (caches and allocator arenas are still filling), so this
run checks the tool, not the verdict: the table, every kind of traffic, and one verdict line
naming what it judged. The verdict that counts is ``make soak``'s ten minutes (its PASS is
recorded in bench/NOTES.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: half a minute of traffic: the long tail, run by make test-long (and CI)
pytestmark = pytest.mark.long


def test_a_short_soak_passes_and_prints_its_table() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--minutes", "0.5", "--every", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = run.stdout
    verdicts = [line for line in out.splitlines() if line.startswith("soak: ")]
    assert len(verdicts) == 1, out + run.stderr
    if verdicts[0].startswith("soak: PASS"):
        assert run.returncode == 0
    else:  # a FAIL names the worker and the measure that grew
        assert run.returncode == 1 and verdicts[0].startswith("soak: FAIL - worker "), verdicts
    assert "rss MB" in out and "blocks" in out
    for kind in ("load 200", "meta 200", "slow reader", "malformed", "hostile 400", "hostile 401"):
        assert kind in out, kind
