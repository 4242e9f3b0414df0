"""An execution outlives the client that submitted it; any client can attach and follow it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from runtime.events import EventKind
from runtime.status import ExecutionStatus
from tests.conftest import NAMESPACE, ROOT
from tests.sop_builders import H

pytestmark = pytest.mark.ray


def test_an_execution_continues_after_its_client_process_exits(engine, tmp_path) -> None:
    import ray

    gate = tmp_path / "gate"
    sop = json.dumps({"sop": "client-gone", "steps": [
        {"id": "wait", "uses": f"{H}:record_run", "resources": {"cpu": 0.25},
         "with": {"runs_dir": str(tmp_path), "name": "wait", "gate": str(gate)}},
        {"id": "after", "uses": f"{H}:echo", "depends_on": ["wait"], "resources": {"cpu": 0.25},
         "with": {"value": "${{ steps.wait.output }}"}}]})
    client = textwrap.dedent(f"""
        import logging, os, sys
        from runtime import Engine
        engine = Engine.connect({ray.get_runtime_context().gcs_address!r}, namespace={NAMESPACE!r},
                                logging_level=logging.ERROR)
        print(engine.submit(sys.stdin.read()), flush=True)
        os._exit(0)  # the client dies without saying goodbye
        """)
    done = subprocess.run([sys.executable, "-c", client], input=sop, capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    eid = done.stdout.strip().splitlines()[-1]

    gate.write_text("open")
    kinds = [e.kind for e in engine.events(eid)]  # this client attaches and follows it to the end
    assert kinds[0] == EventKind.SUBMITTED and kinds[-1] == EventKind.FINISHED
    view = engine.wait(eid, timeout=60)
    assert view.status == ExecutionStatus.COMPLETED
    assert view.outputs["steps"]["after"] == "wait"
