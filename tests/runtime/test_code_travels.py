"""Code that travels: handlers in a client's working_dir reach the step workers, and stay reachable.

Hostile cases first (a working_dir shadowing a module the workers need, a missing one, a
too-big one); then, on a Ray cluster of its own started in a subprocess, a handler module
from a directory the cluster has never seen runs as a step when submitted over the GCS
address, over ``ray://`` and through ``ray job submit``; and an execution whose client
exited runs its later steps after a whole-cluster restart, its code uploaded again from
the state store.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.code_dirs import WORKER_PACKAGES, check_runtime_env
from runtime.errors import SubmissionError
from tests.cluster.local_node import wait_until
from tests.runtime.separate_cluster import VENV_BIN, SeparateCluster

DRIVER = Path(__file__).with_name("travel_driver.py")
STDLIB = sorted(n for n in sys.stdlib_module_names if n.isidentifier() and not n.startswith("_"))


# -- hostile: refused in the client, before anything is uploaded ------------------------------


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(STDLIB + sorted(WORKER_PACKAGES)), as_package=st.booleans())
def test_any_module_shadowing_one_the_workers_need_is_refused_naming_it(tmp_path_factory, name: str,
                                                                        as_package: bool) -> None:
    code = tmp_path_factory.mktemp("code")
    (code / "handlers_ok.py").write_text("def f():\n    return 1\n")
    if as_package:
        (code / name).mkdir()
        (code / name / "__init__.py").write_text("")
        entry = code / name
    else:
        entry = code / f"{name}.py"
        entry.write_text("")
    with pytest.raises(SubmissionError) as e:
        check_runtime_env({"working_dir": str(code)})
    assert str(entry) in str(e.value) and repr(name) in str(e.value) and "rename it" in str(e.value)


@settings(max_examples=40, deadline=None)
@given(name=st.from_regex(r"[a-z][a-z0-9_]{2,12}", fullmatch=True))
def test_any_other_module_name_travels(tmp_path_factory, name: str) -> None:
    if name in sys.stdlib_module_names or name in WORKER_PACKAGES:
        return
    code = tmp_path_factory.mktemp("code")
    (code / f"{name}.py").write_text("")
    (code / "runtime").mkdir()  # a plain directory (no __init__.py) shadows nothing: a regular package wins
    (code / "runtime" / "notes.txt").write_text("")
    check_runtime_env({"working_dir": str(code), "py_modules": [str(code / f"{name}.py")]})


def test_a_missing_working_dir_is_refused_naming_it(tmp_path) -> None:
    missing = tmp_path / "not-there"
    with pytest.raises(SubmissionError, match="does not exist") as e:
        check_runtime_env({"working_dir": str(missing)})
    assert str(missing) in str(e.value)


def test_sopflow_run_with_a_missing_or_shadowing_working_dir_is_a_usage_error(tmp_path) -> None:
    sop = tmp_path / "sop.yaml"
    sop.write_text("sop: s\nsteps:\n  - id: a\n    run: echo hi\n")
    shadowing = tmp_path / "code"
    shadowing.mkdir()
    (shadowing / "json.py").write_text("")
    for working_dir, says in ((tmp_path / "nope", "does not exist"), (shadowing, "json.py")):
        done = subprocess.run([str(VENV_BIN / "sopflow"), "run", str(sop), "--working-dir", str(working_dir),
                               "--address", "127.0.0.1:1"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr[-2000:]
        assert says in done.stderr and "Traceback" not in done.stderr


# -- on a cluster of its own ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("travel-cluster")
    separate = SeparateCluster(home, home / "state.db")
    separate.start()
    try:
        run_driver(separate, home, "bootstrap", separate.address, str(separate.state), "1")
        yield separate
    finally:
        separate.stop()


def run_driver(cluster: SeparateCluster, cwd: Path, *args: str, expect_error: bool = False) -> dict:
    done = subprocess.run([sys.executable, str(DRIVER), *args], capture_output=True, text=True, cwd=cwd,
                          env=cluster.env, timeout=240)
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-3000:]
    out = json.loads(lines[-1])
    assert ("error" in out) == expect_error, (out, done.stderr[-3000:])
    return out


def code_dir(parent: Path, *, gate: bool = False) -> tuple[Path, str, str]:
    """A directory the cluster has never seen: a handler module with a fresh name and an SOP using it."""
    tag = uuid.uuid4().hex[:8]
    module, sop_name = f"travel_handlers_{tag}", f"travel-{tag}"
    code = parent / f"code-{tag}"
    code.mkdir()
    (code / f"{module}.py").write_text(
        "import pathlib, time\n\n"
        "def hello(name):\n    return f'hello {name} from {__name__}'\n\n"
        "def gated(gate, name):\n"
        "    pathlib.Path(gate + '.waiting').write_text('')\n"
        "    deadline = time.monotonic() + 120\n"
        "    while not pathlib.Path(gate).exists() and time.monotonic() < deadline:\n"
        "        time.sleep(0.05)  # polling interval of a bounded wait for the test's gate\n"
        "    return f'{name} passed the gate in {__name__}'\n")
    steps = [{"id": "greet", "uses": f"python:{module}:hello", "with": {"name": "travel"}}]
    if gate:
        steps.append({"id": "later", "uses": f"python:{module}:gated", "depends_on": ["greet"],
                      "with": {"gate": str(parent / f"gate-{tag}"), "name": "later"}})
    (code / "sop.yaml").write_text(json.dumps({"sop": sop_name, "defaults": {"resources": {"cpu": 0.25}},
                                               "steps": steps}))
    return code, module, sop_name


def test_a_package_bigger_than_the_limit_is_refused_at_submit(cluster, tmp_path) -> None:
    code, _, _ = code_dir(tmp_path)
    (code / "weights.bin").write_bytes(os.urandom(2 * 2**20))  # incompressible: the zip stays > 1 MiB
    out = run_driver(cluster, code, "submit", cluster.address, str(code / "sop.yaml"), str(code), "--wait",
                     expect_error=True)
    assert out["error"] == "SubmissionError"
    assert "MiB" in out["message"] and "max_package_mb" in out["message"] and ".rayignore" in out["message"]


def test_without_its_working_dir_the_module_is_refused_at_submit(cluster, tmp_path) -> None:
    code, module, _ = code_dir(tmp_path)
    out = run_driver(cluster, code, "submit", cluster.address, str(code / "sop.yaml"), "--wait", expect_error=True)
    assert repr(module) in out["message"] and "working-dir" in out["message"]


def test_a_handler_from_the_clients_working_dir_runs_over_the_gcs_address(cluster, tmp_path) -> None:
    code, module, sop_name = code_dir(tmp_path)
    out = run_driver(cluster, code, "submit", cluster.address, str(code / "sop.yaml"), str(code), "--wait")
    assert out["status"] == "completed", out
    assert out["outputs"]["steps"]["greet"] == f"hello travel from {module}"
    # The dashboard: every step of the execution is found by its id in the task's name.
    from ray.util.state import list_tasks

    name = f"{sop_name}/greet {out['id']}"

    def found() -> list:
        return list_tasks(address=cluster.dashboard, filters=[("name", "=", name)], raise_on_missing_output=False)

    # Task events reach the state API in batches from the worker through the GCS: on a loaded
    # 2-core box that took over 60 s once, so the margin is wide (the wait ends as soon as it shows).
    wait_until(lambda: any(t.state == "FINISHED" for t in found()), 240, f"task {name!r} in the state API")


def test_a_handler_from_the_clients_working_dir_runs_over_ray_client(cluster, tmp_path) -> None:
    code, module, _ = code_dir(tmp_path)
    out = run_driver(cluster, code, "submit", cluster.client_address, str(code / "sop.yaml"), str(code), "--wait")
    assert out["status"] == "completed", out
    assert out["outputs"]["steps"]["greet"] == f"hello travel from {module}"


def test_ray_job_submit_with_a_working_dir_runs_sopflow_run_there(cluster, tmp_path) -> None:
    code, module, _ = code_dir(tmp_path)
    deadline = time.monotonic() + 90
    while True:
        done = subprocess.run(
            [str(VENV_BIN / "ray"), "job", "submit", "--address", cluster.dashboard, "--working-dir", str(code),
             "--", "sopflow", "run", "sop.yaml", "--format", "json"],
            capture_output=True, text=True, cwd=tmp_path, env=cluster.env, timeout=300)
        # Ray's job server answers this until the head's agent has registered: it says to try again.
        if "No available agent to submit job" not in done.stderr or time.monotonic() > deadline:
            break
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert '"completed"' in done.stdout and f"hello travel from {module}" in done.stdout


def test_sopflow_run_working_dir_ships_the_directory(cluster, tmp_path) -> None:
    code, module, _ = code_dir(tmp_path)
    done = subprocess.run([str(VENV_BIN / "sopflow"), "run", str(code / "sop.yaml"), "--working-dir", str(code),
                           "--address", cluster.address, "--format", "json"],
                          capture_output=True, text=True, cwd=tmp_path, env=cluster.env, timeout=300)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert f"hello travel from {module}" in done.stdout


def kept_packages(cluster: SeparateCluster) -> set[str]:
    """The runtime_env packages the coordinator keeps in its state file (read-only, beside it)."""
    with sqlite3.connect(f"file:{cluster.state}?mode=ro", uri=True) as db:
        return {k for (k,) in db.execute("SELECT kind FROM blobs WHERE execution_id = '~packages'")}


def test_after_its_client_exited_and_the_cluster_restarted_an_execution_finds_its_code(cluster, tmp_path) -> None:
    """Runs last: it restarts the module's cluster (a fresh GCS holds no package at all)."""
    code, module, _ = code_dir(tmp_path, gate=True)
    before = kept_packages(cluster)
    started = run_driver(cluster, code, "submit", cluster.address, str(code / "sop.yaml"), str(code), "--exit")
    eid = started["id"]
    gate = tmp_path / f"gate-{code.name.removeprefix('code-')}"
    wait_until(Path(f"{gate}.waiting").exists, 120, "the later step to start (its client gone)")
    kept = sorted(kept_packages(cluster) - before)
    assert len(kept) == 1 and kept[0].startswith("gcs://_ray_pkg_"), kept  # this client's package, once

    cluster.stop()
    cluster.start()
    assert not run_driver(cluster, tmp_path, "has-package", cluster.address, kept[0])["exists"]  # a fresh GCS
    run_driver(cluster, tmp_path, "bootstrap", cluster.address, str(cluster.state), "1")  # recovers the run
    gate.write_text("open")
    out = run_driver(cluster, tmp_path, "wait", cluster.address, eid)
    assert out["status"] == "completed", out
    assert out["outputs"]["steps"]["greet"] == f"hello travel from {module}"
    assert out["outputs"]["steps"]["later"] == f"later passed the gate in {module}"
    assert run_driver(cluster, tmp_path, "has-package", cluster.address, kept[0])["exists"]  # from the store


def test_a_runtime_envs_env_vars_stay_out_of_the_events_and_come_back_on_recovery() -> None:
    import asyncio

    from runtime.config import EngineConfig
    from runtime.coordinator import CoordinatorCore
    from runtime.eventlog import MemoryEventLog
    from runtime.recovery import rebuild
    from runtime.request import ENV_VARS, SubmitRequest
    from runtime.runners import InProcessRunner
    from sop import loads

    sop = loads("sop: s\nsteps:\n  - id: a\n    run: echo hi\n")
    env = {"working_dir": "gcs://_ray_pkg_0123456789abcdef.zip", "env_vars": {"API_TOKEN": "s3cr3t-value"}}
    log = MemoryEventLog()
    core = CoordinatorCore(EngineConfig(state="memory://"), task_runner=InProcessRunner(), event_log=log)
    core.recovery = {}

    async def scenario() -> list[str]:
        return [await core.submit(SubmitRequest(sop, runtime_env=dict(env))) for _ in range(3)]

    ids = asyncio.run(scenario())
    try:
        for eid in ids:
            logged = json.dumps([e.data for e in log.read(eid)], default=str)
            assert "s3cr3t-value" not in logged and "API_TOKEN" not in logged and env["working_dir"] in logged
            assert rebuild(log, eid).request.runtime_env == env  # recovery gets the values back
        assert len([k for k in log._blobs if k[0] == ENV_VARS]) == 1  # one copy per distinct value
    finally:
        core.journal.close()


def test_connect_refuses_a_runtime_env_it_can_no_longer_apply(ray_cluster, tmp_path) -> None:
    from runtime import Engine

    with pytest.raises(SubmissionError, match="already initialised"):
        Engine.connect("auto", runtime_env={"working_dir": str(tmp_path)})


def test_a_sub_sops_steps_run_with_the_runtime_env_of_the_execution_that_started_it(tmp_path) -> None:
    import asyncio

    from runtime.config import EngineConfig
    from runtime.coordinator import CoordinatorCore
    from runtime.eventlog import MemoryEventLog
    from runtime.request import SubmitRequest
    from runtime.runners import InProcessRunner
    from sop import loads

    (tmp_path / "child.yaml").write_text("sop: child\nsteps:\n  - id: c\n    run: echo child\n")
    parent = loads("sop: parent\nsteps:\n  - id: p\n    uses: sop:child.yaml\n", base_dir=tmp_path)
    child = loads((tmp_path / "child.yaml").read_text(), base_dir=tmp_path)
    env = {"working_dir": "gcs://_ray_pkg_0123456789abcdef.zip", "pip": ["requests"]}
    log = MemoryEventLog()
    core = CoordinatorCore(EngineConfig(state="memory://"), task_runner=InProcessRunner(), event_log=log)
    core.recovery = {}

    async def scenario() -> str:
        eid = await core.submit(SubmitRequest(parent, subsops={"child.yaml": SubmitRequest(child)},
                                              runtime_env=env))
        await asyncio.wait_for(core.executions[eid].done.wait(), 60)
        return eid

    try:
        eid = asyncio.run(scenario())
        children = [e for e in core.executions.values() if e.request.parent == eid]
        assert len(children) == 1 and children[0].request.runtime_env == env
        assert log.read(children[0].id)[0].data["request"]["runtime_env"] == env  # recovery and replay see it
    finally:
        core.journal.close()
