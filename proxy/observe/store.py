"""Adding up the workers' tallies: each writes its snapshot to a shared folder; a scrape reads them all.

Rules it keeps:
- a worker replaces its own file whole (write, then rename), at most once a second and
  again just before it answers a scrape itself, so a reader never sees half a file;
- counters and histograms of a worker that died stay counted: the parent moves a dead
  worker's counts into ``retired.json`` (so the folder holds one file per live worker and
  one more, however many workers come and go); gauges and process numbers are read from
  live workers only;
- the folder is the runtime's own (made by the parent before it forks, removed on exit).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

RETIRED = "retired.json"
#: keys whose entries are [labels..., value] rows, summed by labels
_ROWS = ("requests", "bytes_sent", "cube_calls", "continue_wait_rounds", "query_callers", "meta_cache")
_ROWS_MORE = ("gitlab_calls", "auth_cache", "refused")
_HISTOGRAMS = ("latency", "cube_latency", "cube_by_url", "gitlab_latency")


def worker_file(folder: Path, pid: int) -> Path:
    return folder / f"worker-{pid}.json"


def write_snapshot(folder: Path, snapshot: dict[str, Any]) -> None:
    path = worker_file(folder, int(snapshot["pid"]))
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(orjson.dumps(snapshot))
    os.replace(temporary, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process took the pid
        return False
    return True


def read_snapshots(folder: Path) -> list[dict[str, Any]]:
    snapshots = []
    for path in sorted(folder.glob("*.json")):
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            snapshots.append(orjson.loads(path.read_bytes()))
    return snapshots


def merge(snapshots: Iterable[dict[str, Any]], alive: Callable[[int], bool] = _alive) -> dict[str, Any]:
    """One snapshot of the sums: counters and histograms of every snapshot, gauges of live processes only."""
    merged: dict[str, Any] = {"processes": {}, "gauges": {}, "tenant_cap_waits": 0, "projects": {}}
    rows: dict[str, dict[tuple[Any, ...], float]] = {key: {} for key in (*_ROWS, *_ROWS_MORE)}
    histograms: dict[str, dict[str, tuple[list[int], float]]] = {key: {} for key in _HISTOGRAMS}
    for snap in snapshots:
        for key in rows:
            for *labels, value in snap.get(key, []):
                table = rows[key]
                table[tuple(labels)] = table.get(tuple(labels), 0) + value
        for key in histograms:
            for label, counts, total in snap.get(key, []):
                table_h = histograms[key]
                old = table_h.get(label)
                table_h[label] = (
                    (counts, total)
                    if old is None
                    else ([a + b for a, b in zip(old[0], counts, strict=True)], old[1] + total)
                )
        merged["tenant_cap_waits"] += snap.get("tenant_cap_waits", 0)
        live = snap.get("pid") is not None and alive(int(snap["pid"]))
        for project, *values in snap.get("projects", []):
            old_p = merged["projects"].get(project, [0] * len(values))
            if not live:
                values[2] = 0  # in flight: a dead worker holds nothing
            merged["projects"][project] = [a + b for a, b in zip(old_p, values, strict=True)]
        if live:
            for name, value in snap.get("gauges", {}).items():
                merged["gauges"][name] = merged["gauges"].get(name, 0) + value
            merged["processes"][str(snap["pid"])] = {**snap.get("process", {}), "started": snap.get("started", 0)}
    for key, table in rows.items():
        merged[key] = [[*labels, value] for labels, value in table.items()]
    for key, table_h in histograms.items():
        merged[key] = [[label, counts, total] for label, (counts, total) in table_h.items()]
    merged["projects"] = [[key, *values] for key, values in merged["projects"].items()]
    return merged


def retire(folder: Path, pid: int) -> None:
    """Fold a dead worker's counts into ``retired.json`` and remove its file (the parent calls this)."""
    path = worker_file(folder, pid)
    if not path.exists():
        return
    combined = merge(read_snapshots_of(folder / RETIRED, path), alive=lambda _: False)
    combined.pop("processes", None)
    combined.pop("gauges", None)
    combined["pid"] = None
    retired = folder / RETIRED
    temporary = retired.with_suffix(".tmp")
    temporary.write_bytes(orjson.dumps(combined))
    os.replace(temporary, retired)
    path.unlink(missing_ok=True)


def read_snapshots_of(*paths: Path) -> list[dict[str, Any]]:
    found = []
    for path in paths:
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            found.append(orjson.loads(path.read_bytes()))
    return found
