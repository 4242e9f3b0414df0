"""The ResourceManager actor on the test session's Ray cluster: leases, utilisation, the CLI's view, kill."""

from __future__ import annotations

import json

import pytest

from runtime.errors import ResourceRequestError
from tests.sop_builders import H, own_engine, wait_for


@pytest.fixture(scope="module")
def managed(ray_cluster, tmp_path_factory):
    with own_engine("sopflow-resources-tests", tmp_path_factory.mktemp("resources")) as e:
        yield e


@pytest.mark.ray
def test_the_coordinator_leases_the_cluster_and_shows_what_running_steps_use(managed, tmp_path) -> None:
    import ray

    from actors.resource_manager import NAME
    from runtime._cli_resources import render

    gate = tmp_path / "gate"
    eid = managed.submit(json.dumps({"sop": "holds-a-cpu", "steps": [
        {"id": "hold", "uses": f"{H}:wait_for_file", "resources": {"cpu": 1.5, "memory_mb": 64},
         "with": {"path": str(gate), "timeout_s": 60}}]}))
    wait_for(lambda: managed.status(eid).steps["hold"].status.value == "running")
    view = managed.resources()
    (node, row), = view["nodes"].items()  # the session's one node, leased whole
    assert row["total"]["cpu"] == 4 and row["leased"]["cpu"] == 4
    assert row["used"] == {"cpu": 1.5, "memory_mb": 64, "gpu": 0}
    assert view["holding"][eid]["cpu"] == 1.5 and view["running"] == 1
    assert managed.info()["resources"]["nodes"][node]["used"]["cpu"] == 1.5
    table = render(view)
    assert "1.5/4/4" in table and "1 step(s) running" in table
    actor = ray.get_actor(NAME, namespace="sopflow-resources-tests")
    # The ResourceManager hears what is used at the next renewal (every third of the 30 s TTL).
    report = wait_for(lambda: (r := ray.get(actor.report.remote()))["nodes"][node]["used"]["cpu"] == 1.5 and r,
                      timeout_s=40)
    assert report["holders"] == 1 and report["nodes"][node]["leased"]["cpu"] == 4
    gate.write_text("open")
    assert managed.wait(eid, timeout=60).status.value == "completed"
    wait_for(lambda: managed.resources()["nodes"][node]["used"]["cpu"] == 0)  # given back as it ended


@pytest.mark.ray
def test_a_step_bigger_than_any_node_is_refused_at_submit_over_ray(managed) -> None:
    with pytest.raises(ResourceRequestError, match=r"step 'huge' of too-big asks for cpu=64.*largest node has cpu=4"):
        managed.submit(json.dumps({"sop": "too-big", "steps": [
            {"id": "huge", "uses": "shell", "run": "true", "resources": {"cpu": 64}}]}))


@pytest.mark.ray
def test_killing_the_engine_removes_its_resource_manager(ray_cluster, tmp_path) -> None:
    import ray

    from actors.resource_manager import NAME

    with own_engine("sopflow-resources-kill", tmp_path) as engine:
        engine.resources()
        assert ray.get_actor(NAME, namespace="sopflow-resources-kill")
    wait_for(lambda: _gone(NAME, "sopflow-resources-kill"))


def _gone(name: str, namespace: str) -> bool:
    import ray

    try:
        ray.get_actor(name, namespace=namespace)
    except ValueError:
        return True
    return False


def test_a_refused_request_exits_2_without_a_traceback(tmp_path) -> None:
    """The CLI turns the error into its message and exit status 2 (refused before it ran)."""
    import click

    from runtime._cli_exec import _fail

    with pytest.raises(click.ClickException) as e:
        _fail(ResourceRequestError("step 'fit' of x asks for gpu=2, more than any node has"))
    assert e.value.exit_code == 2 and "gpu=2" in e.value.format_message()
