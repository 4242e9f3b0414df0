"""`ray up` a cluster with the local provider, submit an SOP from outside it, `ray down`.

The whole path a user takes with `cluster.yaml`, on this machine: a real sshd
(tests/cluster/local_node.py), the real cluster launcher, sopflow's CLI as a
client with its own home directory; then a notebook in a directory the cluster has
never seen, whose SOP uses a handler from a file beside it, watching the run and
finding its steps in Ray's task list; and a teardown that must leave nothing behind.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.local_node import LocalNode, free_port, listening_address, wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/unshare").exists(),
                                reason="the local node needs root and unshare (namespaces)")


def launcher(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    return subprocess.run([str(BIN / "ray"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def node() -> Iterator[LocalNode]:
    with LocalNode() as n:
        yield n


def test_ray_up_submit_from_outside_then_ray_down_leaves_nothing(node: LocalNode, tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("gcs_port", "dashboard_port", "client_port")}
    state = node.dir / "head-state" / "state.db"
    config = tmp_path / "cluster.yaml"
    config.write_text(string.Template((Path(__file__).parent / "cluster-local.yaml").read_text()).substitute(
        suffix=uuid.uuid4().hex[:8], ssh_key=node.key, ssh_port=node.port, state=state, num_cpus=2,
        temp_dir=node.dir / "ray", **ports))

    up = launcher("up", "-y", "--no-config-cache", str(config), cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert any("raylet" in p for p in node.processes())
        # The dashboard is reached by port-forward, never exposed.
        assert listening_address(ports["dashboard_port"]) == "127.0.0.1"

        # A client elsewhere: its own home directory, the head's token copied to it.
        client_home = tmp_path / "client-home"
        client_home.mkdir()
        env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "SOPFLOW_STATE")},
               "HOME": str(client_home), "RAY_AUTH_TOKEN_PATH": str(Path("/root/.ray/auth_token"))}
        run = subprocess.run([str(BIN / "sopflow"), "run", "examples/hello-linear.yaml",
                              "--address", f"127.0.0.1:{ports['gcs_port']}", "--input", "name=ada",
                              "--format", "json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        view = json.loads(run.stdout)
        assert view["status"] == "completed"
        assert "ada" in json.dumps(view["outputs"])
        # The state file is where the head's configuration puts it, not in the client's home.
        assert state.exists()
        assert not (client_home / ".sopflow").exists()

        _notebook_with_local_code(f"127.0.0.1:{ports['gcs_port']}", env, tmp_path / "my-notebook")
    finally:
        down = launcher("down", "-y", str(config), cwd=tmp_path)
    assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
    # `ray down` reports success even when `ray stop` failed on the node: check for ourselves.
    wait_until(lambda: not [p for p in node.processes() if "ray" in p], 60, "the head's Ray processes to end")
    assert listening_address(ports["gcs_port"]) is None


NOTEBOOK_CELLS = [
    # connect, shipping the notebook's directory (and my_steps.py in it) to the steps
    'import os\n'
    'from runtime import Engine\n'
    'engine = Engine.connect(os.environ["SOPFLOW_ADDRESS"], runtime_env={"working_dir": "."})',
    # the SOP, drawn inline
    'SOP = """\n'
    'sop: local-code\n'
    'version: "1"\n'
    'steps:\n'
    '  - id: double\n'
    '    uses: python:my_steps:double\n'
    '    with: {x: 21}\n'
    '  - id: shout\n'
    '    uses: python:my_steps:shout\n'
    '    with: {text: "${{ steps.double.output }}"}\n'
    '    depends_on: [double]\n'
    'outputs:\n'
    '  answer: "${{ steps.shout.output }}"\n'
    '"""\n'
    'sop, _, _ = engine.load(SOP)\n'
    'sop',
    # submit and watch it live
    'from IPython.display import HTML, display\n'
    'from runtime.display import execution_html\n'
    'run = engine.submit(SOP)\n'
    'for event in engine.events(run):\n'
    '    print(event.describe())\n'
    'view = engine.wait(run, timeout=120)\n'
    'display(HTML(execution_html(view, sop)))\n'
    'print("RESULT", run, view.status.value, engine.result(run)["outputs"]["answer"])',
    # find its steps among Ray's tasks (what the dashboard's task list shows)
    'import time\n'
    'from ray.util.state import list_tasks\n'
    'for _ in range(60):  # the task list is fed by task events, reported every second or so\n'
    '    tasks = list_tasks(address=os.environ["SOPFLOW_ADDRESS"], limit=10000, raise_on_missing_output=False)\n'
    '    mine = [t for t in tasks if run in (t.name or "") and t.state == "FINISHED"]\n'
    '    if len(mine) >= 2:\n'
    '        break\n'
    '    time.sleep(0.5)\n'
    'print("TASKS", sorted({(t.name, t.state) for t in mine}))',
]

MY_STEPS = '''
def double(x: int) -> int:
    return 2 * x


def shout(text) -> str:
    return f"{text}!"
'''


def _notebook_with_local_code(address: str, client_env: dict[str, str], workdir: Path) -> None:
    """Run a notebook from a directory the cluster has never seen, whose handlers live beside it."""
    import nbformat
    from nbclient import NotebookClient

    from tests.notebooks.outputs import html_outputs, stream

    workdir.mkdir()
    (workdir / "my_steps.py").write_text(MY_STEPS)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in NOTEBOOK_CELLS])
    client = NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    client.execute(env={**client_env, "SOPFLOW_ADDRESS": address, "PYTHONPATH": str(ROOT)})
    drawn, watched, found = nb.cells[1], nb.cells[2], nb.cells[3]
    assert any("<svg" in h and "double" in h and "shout" in h for h in html_outputs(drawn))
    log = stream(watched)
    assert "step_succeeded double" in log and "execution_finished: completed" in log, log[-2000:]
    run, status, answer = log.split("RESULT ", 1)[1].split()[:3]
    assert (status, answer) == ("completed", "42!")
    assert any("<svg" in h and "succeeded" in h for h in html_outputs(watched))  # the DAG, coloured by state
    tasks = stream(found)
    assert tasks.count(run) >= 2 and "FINISHED" in tasks, tasks  # both steps, found by the execution id
