"""Step handlers used by the example SOPs: plain functions, nothing sopflow-specific."""

from __future__ import annotations

import os


def greet(name: str) -> str:
    return f"hello, {name}"


def shout(text: str) -> str:
    return text.upper() + "!"


def probe(region: str) -> dict:
    """Pretend to probe a region: the regions in $DEMO_DOWN_REGIONS (default "ap") are down."""
    down = os.environ.get("DEMO_DOWN_REGIONS", "ap").split(",")
    return {"region": region, "up": region not in down}


def merge_findings(findings: list) -> dict:
    found = [f for f in findings if isinstance(f, dict)]
    return {"down": sorted(f["region"] for f in found if not f["up"]),
            "checked": sorted(f["region"] for f in found)}


def summarise(merged: dict) -> str:
    down = merged["down"]
    return f"{len(merged['checked'])} regions checked, " + (
        f"down: {', '.join(down)}" if down else "all up")
