"""The in-process engine itself (``Engine.in_process``): what shutting it down leaves behind."""

from __future__ import annotations

import asyncio

from runtime.status import StepStatus
from tests.sop_builders import H, sop_text, wait_for


def test_shutting_down_an_in_process_engine_closes_its_loop_and_leaves_no_task_pending(sop_file, tmp_path) -> None:
    """A running step's thread cannot be stopped, but the engine's loop, tasks and file handles can."""
    from runtime import Engine

    gate = tmp_path / "gate"
    engine = Engine.in_process()
    eid = engine.submit(sop_file(sop_text(f"""\
        steps:
          - id: waits
            uses: {H}:wait_for_file
            with: {{path: "{gate}", timeout_s: 30}}
        """, name="shut-down-while-running")))
    wait_for(lambda: engine.status(eid).steps["waits"].status == StepStatus.RUNNING, 30)
    loop = engine._conn._loop
    try:
        engine.shutdown()
        assert loop.is_closed()
        assert not [t for t in asyncio.all_tasks(loop) if not t.done()]
    finally:
        gate.write_text("open")  # the abandoned thread ends; its result finds a closed loop and is dropped
