"""Security rules end to end on the shared Ray cluster: shell quoting, secrets in worker logs."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from runtime.events import EventKind
from runtime.status import ExecutionStatus
from tests.sop_builders import events_of, sop_text

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("payload", ["x; touch {f}", "$(touch {f})", "`touch {f}`", "'; touch {f}; '"])
def test_an_input_with_shell_syntax_reaches_the_command_as_data(engine, sop_file, tmp_path: Path,
                                                                 payload: str) -> None:
    marker = tmp_path / f"pwned-{uuid.uuid4().hex[:8]}"
    value = payload.format(f=marker)
    path = sop_file(sop_text("""\
        steps:
          - id: greet
            run: "echo hello ${{ inputs.name }}"
        outputs:
          said: "${{ steps.greet.output.stdout }}"
        """, name="quoting", inputs="inputs:\n  name: {type: string, required: true}\n"))
    eid = engine.submit(path, {"name": value})
    view = engine.wait(eid, timeout=60)

    assert view.status == ExecutionStatus.COMPLETED
    assert not marker.exists(), "the input's shell syntax ran"
    assert engine.result(eid)["outputs"]["said"] == f"hello {value}\n"


def test_a_run_with_quoted_values_replays_identically_and_its_replay_runs_nothing_either(
        engine, sop_file, tmp_path: Path) -> None:
    marker = tmp_path / f"pwned-{uuid.uuid4().hex[:8]}"
    token = f"tok3n-{uuid.uuid4().hex[:12]}"
    path = sop_file(sop_text("""\
        steps:
          - id: greet
            run: "echo hello ${{ inputs.name }} ${{ inputs.token }} | wc -c"
          - id: again
            depends_on: [greet]
            run: "echo '${{ inputs.name }}'"
        """, name="quoting-replay", inputs="inputs:\n  name: {type: string, required: true}\n"
                                          "  token: {type: string, secret: true, required: true}\n"))
    eid = engine.submit(path, {"name": f"x; touch {marker}", "token": token})
    assert engine.wait(eid, timeout=60).status == ExecutionStatus.COMPLETED

    whole = engine.replay(eid)
    assert whole.deterministic, whole.render()
    partial = engine.replay(eid, from_step="again")
    assert partial.handlers_run == 1 and partial.deterministic, partial.render()
    assert not marker.exists()
    assert token not in json.dumps([e.to_dict() for e in events_of(engine, eid)])


def test_an_input_with_a_nul_character_fails_the_step_permanently_naming_it(engine, sop_file) -> None:
    path = sop_file(sop_text("""\
        steps:
          - id: greet
            run: "echo hello ${{ inputs.name }}"
        """, name="quoting-nul", inputs="inputs:\n  name: {type: string, required: true}\n"))
    eid = engine.submit(path, {"name": "a\0b"})
    view = engine.wait(eid, timeout=60)

    assert view.status == ExecutionStatus.FAILED
    assert view.steps["greet"].attempts == 1  # permanent: not retried
    failed = [e for e in events_of(engine, eid) if e.kind == EventKind.STEP_FAILED]
    message = json.dumps([e.data for e in failed])
    assert "step 'greet'" in message and "inputs.name" in message and "NUL" in message



# -- sub-SOP paths -------------------------------------------------------------------------------


def test_a_sub_sop_outside_the_directory_is_refused_at_submit_even_for_a_loaded_sop(engine, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    from runtime.errors import SubmissionError
    from sop import Sop, SopValidationError

    (tmp_path / "outside.yaml").write_text("sop: sub\nsteps:\n  - {id: x, run: echo}\n")
    project = tmp_path / "project"
    project.mkdir()
    main = project / "main.yaml"
    main.write_text("sop: main\nsteps:\n  - {id: a, uses: 'sop:../outside.yaml'}\n")
    with pytest.raises(SopValidationError, match="outside the SOP's directory"):
        engine.submit(str(main))
    monkeypatch.chdir(project)  # a loaded Sop object's sub-SOPs are found from the working directory
    model = Sop.model_validate({"sop": "main", "steps": [{"id": "a", "uses": "sop:../outside.yaml"}]})
    with pytest.raises(SubmissionError, match="step 'a': sub-SOP path '../outside.yaml' leads outside"):
        engine.submit(model)


# -- secrets -------------------------------------------------------------------------------------


def _worker_log_lines(marker: str) -> list[str]:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    lines = []
    for f in logs.glob("worker-*"):
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        lines += [line for line in text.splitlines() if marker in line]
    return lines


def test_a_secret_logged_through_context_logger_is_masked_in_the_ray_worker_log(engine, sop_file) -> None:
    from tests.sop_builders import H, wait_for

    token, marker = f"wl-s3cret-{uuid.uuid4().hex}", f"MARK-{uuid.uuid4().hex}"
    path = sop_file(sop_text(f"""\
        steps:
          - id: talk
            uses: {H}:log_secret
            with: {{token: "${{{{ inputs.token }}}}", marker: "{marker}"}}
        """, name="logged-secret", inputs="inputs:\n  token: {type: string, secret: true, required: true}\n"))
    eid = engine.submit(path, {"token": token})
    assert engine.wait(eid, timeout=60).status == ExecutionStatus.COMPLETED

    lines = wait_for(lambda: (found := _worker_log_lines(marker)) and len(found) >= 3 and found, timeout_s=30)
    assert all(token not in line for line in lines), lines
    assert any("as argument ***" in line for line in lines)


def test_a_secret_shorter_than_the_minimum_is_refused_at_submit(engine, sop_file) -> None:
    from runtime.errors import SubmissionError

    path = sop_file(sop_text("""\
        steps:
          - id: a
            run: "echo build 1.2.1"
        """, name="short-secret", inputs="inputs:\n  pin: {type: string, secret: true, required: true}\n"))
    with pytest.raises(SubmissionError, match="secret input 'pin' must be at least 8 characters"):
        engine.submit(path, {"pin": "1"})


# -- imported histories ----------------------------------------------------------------------------


def test_the_engine_refuses_a_history_with_a_hostile_execution_id_and_stores_nothing(engine) -> None:
    from runtime.errors import StateStoreError

    hostile = "../x'; DROP TABLE events; --"
    doc = {"format": "sopflow.history/1",
           "execution": {"id": hostile, "sop": "t", "status": "completed", "submitted_at": 1.0, "version": 1,
                         "ended_at": 2.0, "terminal": True, "idempotency_key": None, "parent": None},
           "events": [{"execution_id": hostile, "seq": 1, "kind": "execution_finished", "ts": 2.0,
                       "step": None, "attempt": None, "data": {}}]}
    with pytest.raises(StateStoreError, match=r"invalid history: execution.id: expected an execution id"):
        engine.import_history(doc)
    assert all(v.id != hostile for v in engine.list())
