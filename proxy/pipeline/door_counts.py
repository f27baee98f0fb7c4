"""What a front door counts for the metrics: the pipeline makes one per door and hands it over."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class DoorCounts:
    """Requests a door answered itself, connections it handed to another, and connections open on it now."""

    served: int = 0
    handed_over: int = 0
    open: int = 0
