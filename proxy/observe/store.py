"""Adding up the workers' tallies: each writes its snapshot to a shared folder; a scrape reads them all.

Rules it keeps:
- a worker replaces its own file whole (write, then rename), at most once a second and
  again just before it answers a scrape itself, so a reader never sees half a file;
- counters and histograms of a worker that died stay counted: the parent moves a dead
  worker's counts into ``retired.json`` (so the folder holds one file per live worker and
  one more, however many workers come and go); gauges and process numbers are read from
  live workers only;
- never counted twice nor dropped: ``retired.json`` names the workers it holds (the last
  ``FOLDED_KEPT``, each by pid and start time, so a new worker given a reused pid is not
  taken for a folded one), and a worker's own file is ignored once it is named there, so a
  scrape between the parent's two steps (write ``retired.json``, remove the worker's file)
  sees each count once; a counter therefore never goes back;
- the folder is the runtime's own (made by the parent before it forks, removed on exit).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from proxy.observe.families import COUNTED, TIMED, Buckets, buckets, rows

RETIRED = "retired.json"
PARENT = "parent.json"
#: workers ``retired.json`` remembers folding (their files are gone long before this many more retire)
FOLDED_KEPT = 256


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


def _named(snapshot: dict[str, Any]) -> tuple[int, float]:
    """Which worker wrote a snapshot: its pid and start time (a pid alone can be reused)."""
    return int(snapshot["pid"]), float(snapshot.get("started", 0))


def _named_pair(entry: list[Any]) -> tuple[int, float]:
    return int(entry[0]), float(entry[1])


def read_snapshots(folder: Path) -> list[dict[str, Any]]:
    snapshots = []
    for path in sorted(folder.glob("*.json")):
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            snapshots.append(orjson.loads(path.read_bytes()))
    return snapshots


def merge(snapshots: Iterable[dict[str, Any]], alive: Callable[[int], bool] = _alive) -> dict[str, Any]:
    """One snapshot of the sums: every declared counter and histogram (``families.py``) of every snapshot, gauges
    of live processes only."""
    merged: dict[str, Any] = {"processes": {}, "gauges": {}, "cube_up": {}, "projects": {}}
    counted: dict[str, dict[tuple[Any, ...], float]] = {key: {} for key in COUNTED}
    timed: dict[str, dict[tuple[Any, ...], Buckets]] = {key: {} for key in TIMED}
    snapshots = list(snapshots)
    folded = {_named_pair(entry) for snap in snapshots for entry in snap.get("folded", [])}
    for snap in snapshots:
        if snap.get("pid") is not None and _named(snap) in folded:
            continue  # already counted in retired.json (its file is about to go)
        for key, family in COUNTED.items():
            sums = counted[key]
            for labels, value in rows(snap, family, zero=False):
                sums[labels] = sums.get(labels, 0) + value
        for key, family in TIMED.items():
            added = timed[key]
            for row in buckets(snap, family):
                old = added.get(row.labels)
                added[row.labels] = (
                    row
                    if old is None
                    else old._replace(
                        counts=[a + b for a, b in zip(old.counts, row.counts, strict=True)], total=old.total + row.total
                    )
                )
        merged["last_reload"] = max(merged.get("last_reload", 0), snap.get("last_reload", 0))
        live = snap.get("pid") is not None and alive(int(snap["pid"]))
        for project, *values in snap.get("projects", []):
            old_p = merged["projects"].get(project, [0] * len(values))
            if not live:
                values[2] = 0  # in flight: a dead worker holds nothing
            merged["projects"][project] = [a + b for a, b in zip(old_p, values, strict=True)]
        if live:
            for name, value in snap.get("gauges", {}).items():
                merged["gauges"][name] = merged["gauges"].get(name, 0) + value
            for url, up in snap.get("cube_up", {}).items():  # any worker that found it up
                merged["cube_up"][url] = max(merged["cube_up"].get(url, 0), up)
            # one per worker slot: while a reload overlaps two generations, the newer worker of a slot
            slot = str(snap.get("slot", snap["pid"]))
            seen = merged["processes"].get(slot)
            if seen is None or seen["started"] <= snap.get("started", 0):
                merged["processes"][slot] = {**snap.get("process", {}), "started": snap.get("started", 0)}
    for key, sums in counted.items():
        merged[key] = [[*labels, value] for labels, value in sums.items()]
    for key, added in timed.items():
        merged[key] = [[*row.labels, row.counts, row.total] for row in added.values()]
    merged["projects"] = [[key, *values] for key, values in merged["projects"].items()]
    return merged


def retire(folder: Path, pid: int) -> None:
    """Fold a dead worker's counts into ``retired.json`` and remove its file (the parent calls this)."""
    path = worker_file(folder, pid)
    if not path.exists():
        return
    earlier, dead = read_snapshots_of(folder / RETIRED), read_snapshots_of(path)
    if not dead:
        path.unlink(missing_ok=True)
        return
    named = _named(dead[0])
    folded = [*(earlier[0].get("folded", []) if earlier else []), list(named)][-FOLDED_KEPT:]
    if earlier and named in {_named_pair(entry) for entry in earlier[0].get("folded", [])}:
        path.unlink(missing_ok=True)  # folded already (a retire cut short after its first step)
        return
    combined = merge([*earlier, *dead], alive=lambda _: False)
    combined.pop("processes", None)
    combined.pop("gauges", None)
    combined.pop("cube_up", None)
    combined["pid"] = None
    combined["folded"] = folded
    retired = folder / RETIRED
    temporary = retired.with_suffix(".tmp")
    temporary.write_bytes(orjson.dumps(combined))
    os.replace(temporary, retired)
    path.unlink(missing_ok=True)


def parent_event(folder: Path, key: str, label: str, at: float | None = None) -> None:
    """The parent counts one of its own events (a reload by outcome, a worker restart by cause) in
    ``parent.json``, which every scrape adds up with the workers' (``at``: a reload's time, kept too)."""
    path = folder / PARENT
    found = read_snapshots_of(path)
    record: dict[str, Any] = found[0] if found else {"pid": None}
    rows = {row[0]: row[1] for row in record.get(key, [])}
    rows[label] = rows.get(label, 0) + 1
    record[key] = [[name, n] for name, n in rows.items()]
    if at is not None:
        record["last_reload"] = at
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(orjson.dumps(record))
    os.replace(temporary, path)


def read_snapshots_of(*paths: Path) -> list[dict[str, Any]]:
    found = []
    for path in paths:
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            found.append(orjson.loads(path.read_bytes()))
    return found
