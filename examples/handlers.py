"""Step handlers used by the example SOPs: plain functions, nothing sopflow-specific."""

from __future__ import annotations

import zlib


def greet(name: str) -> str:
    return f"hello, {name}"


def shout(text: str) -> str:
    return text.upper() + "!"


def probe(region: str) -> dict:
    """Pretend to probe a region; the outcome is a fixed function of its name."""
    healthy = zlib.crc32(region.encode()) % 3 != 0
    return {"region": region, "up": healthy}


def merge_findings(findings: list) -> dict:
    found = [f for f in findings if isinstance(f, dict)]
    return {"down": sorted(f["region"] for f in found if not f["up"]),
            "checked": sorted(f["region"] for f in found)}


def summarise(merged: dict) -> str:
    down = merged["down"]
    return f"{len(merged['checked'])} regions checked, " + (
        f"down: {', '.join(down)}" if down else "all up")
