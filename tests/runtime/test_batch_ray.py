"""Preemption on Ray: stopped attempts are killed (their workers die), the execution resumes from the log.

Properties 36 and 39 with real Ray tasks: a real-time execution starts within 1 s under a full
batch load, and the preempted batch execution completes with every step run to its end exactly
once, proven by the marks its steps leave in a file.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.batch_handlers import alive, count, pids
from tests.runtime.test_batch_engine import chain, first, one_step
from tests.sop_builders import events_of, own_engine, wait_for


@pytest.fixture
def full(ray_cluster, tmp_path):
    """An engine of its own with one run slot on the shared cluster."""
    with own_engine(f"sopflow-batch-{uuid.uuid4().hex[:8]}", tmp_path, max_running_steps=1) as engine:
        yield engine


def test_realtime_preempts_batch_on_ray(full, tmp_path):
    """Properties 36 and 39 on Ray: the real-time execution starts within 1 s by preempting the batch one,
    which later completes with a, b and c each run to their end exactly once (b's stopped attempt was
    killed before its end; the same attempt ran again)."""
    batch = full.submit(chain(tmp_path), schedule={"batch": "ray-night"}, priority="low")
    wait_for(lambda: full.status(batch).steps["b"].status.value == "running", 60)
    wait_for(lambda: count(tmp_path / "marks", "b start") == 1, 60)
    t0 = time.time()
    rt = full.submit(one_step(tmp_path, "urgent"))
    assert full.wait(rt, timeout=60).status.value == "completed"
    assert first(full, rt, "step_started").ts - t0 < 1.0
    assert first(full, batch, "execution_preempted").data["interrupted"] == {"b": 1}
    wait_for(lambda: full.status(batch).status.value != "preempted", 60)
    assert not alive(pids(tmp_path / "marks", "b")[0])  # resumed only once the stopped attempt's worker died
    (tmp_path / "gate").touch()
    view = full.wait(batch, timeout=60)
    assert view.status.value == "completed" and view.steps["b"].attempts == 1
    marks = tmp_path / "marks"
    assert [count(marks, f"{s} done") for s in "abc"] == [1, 1, 1]
    assert count(marks, "b start") == 2  # the stopped attempt started, never finished
    assert [e.step for e in events_of(full, batch) if e.kind.value == "step_succeeded"] == ["a", "b", "c"]
    found = full.batch_report("ray-night")
    assert found["finished"] and found["preemptions"] == 1 and found["counts"] == {"completed": 1}


def test_preempted_batch_resumes_after_the_coordinator_restarts(full, tmp_path):
    """Durable preemption: the coordinator dies while the batch execution is preempted; Ray restarts it,
    the gate is rebuilt from the log, and the execution completes with every step run once to its end."""
    import ray

    batch = full.submit(chain(tmp_path), schedule={"batch": "ray-crash"})
    wait_for(lambda: count(tmp_path / "marks", "b start") == 1, 60)
    rt = full.submit(one_step(tmp_path, "holder", gate=tmp_path / "rt-gate"))
    wait_for(lambda: full.status(batch).status.value == "preempted", 60)
    ray.kill(full._conn.actors.coordinator, no_restart=False)
    stopped = pids(tmp_path / "marks", "b")[0]
    wait_for(lambda: not alive(stopped), 60)  # the stopped attempt's worker was killed (not left to finish)
    (tmp_path / "rt-gate").touch()
    (tmp_path / "gate").touch()
    assert full.wait(rt, timeout=90).status.value == "completed"
    assert full.wait(batch, timeout=90).status.value == "completed"
    marks = tmp_path / "marks"
    assert [count(marks, f"{s} done") for s in "abc"] == [1, 1, 1]
    assert [e.step for e in events_of(full, batch) if e.kind.value == "step_succeeded"] == ["a", "b", "c"]
