"""The metric names README documents are the names Prometheus scrapes from Ray's metrics agent."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from tests.cluster.local_node import wait_until
from tests.conftest import ROOT
from tests.sop_builders import H

pytestmark = pytest.mark.ray


def documented_metric_names() -> list[str]:
    """The names listed between README's ``metrics:begin`` and ``metrics:end`` markers."""
    text = (ROOT / "README.md").read_text()
    section = text.split("<!-- metrics:begin -->", 1)[1].split("<!-- metrics:end -->", 1)[0]
    return re.findall(r"^\| `([a-z_]+)`", section, flags=re.M)


def scrape() -> set[str]:
    """Every metric name Ray's metrics agents on the cluster's nodes export right now."""
    import ray

    names: set[str] = set()
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            names.update(m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]",
                                                         r.read().decode(), flags=re.M))
    return names


def test_every_documented_metric_name_is_scraped_from_the_cluster_after_a_run(engine) -> None:
    documented = documented_metric_names()
    assert len(documented) >= 4 and all(n.startswith("ray_sopflow_") for n in documented), documented
    sop = json.dumps({"sop": "metric-names", "steps": [
        {"id": "a", "uses": f"{H}:echo", "with": {"value": 1}, "resources": {"cpu": 0.25}}]})
    eid = engine.submit(sop)
    assert engine.wait(eid, timeout=60).status.value == "completed"

    found: set[str] = set()

    def all_found() -> bool:
        found.update(scrape())
        return set(documented) <= found

    try:
        wait_until(all_found, 90, "every documented metric in the agents' export", interval=1.0)
    except TimeoutError:
        raise AssertionError(f"not exported: {sorted(set(documented) - found)}; sopflow's exported: "
                             f"{sorted(n for n in found if 'sopflow' in n)}") from None
