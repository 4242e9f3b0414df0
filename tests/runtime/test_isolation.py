"""Every attempt runs in its own working directory and environment (properties 15 and 16)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.handlers import StepTask, run_task
from runtime.isolation import SHELL_ENV_ALLOW

IH = "python:tests.isolation_handlers"
SHELL_LOOK = 'pwd; ls -A; echo "MINE=$MINE"; env | cut -d= -f1 | sort | tr "\\n" " "'


def _shell(name: str, command: str, env: dict[str, str] | None = None, attempt: int = 1) -> StepTask:
    return StepTask("exe-" + name, "iso", name, attempt, "shell", run=command, env=env or {}, timeout_s=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shell=st.booleans(), ok=st.booleans(), write=st.booleans(), name=st.from_regex(r"[a-z]{1,8}", fullmatch=True))
def test_property_15_packaging_and_cleanup(shell: bool, ok: bool, write: bool, name: str) -> None:
    """For any attempt: it starts in a fresh directory of its own, its output is collected before it
    ends, the directory is gone after a success and kept (path in the error) after a failure."""
    if shell:
        command = f"ls -A; {'echo ' + name + ' > result.txt;' if write else ''} echo out-{name}; " \
                  f"{'true' if ok else 'echo bad-' + name + ' >&2; exit 3'}"
        outcome = run_task(_shell(name, command))
        assert f"out-{name}" in outcome.output["stdout"]  # logs collected before the process ended
        assert outcome.output["stdout"].startswith(f"out-{name}")  # `ls -A` of a fresh dir: empty
        if not ok:
            assert f"bad-{name}" in outcome.output["stderr"]
    else:
        task = StepTask("exe-" + name, "iso", name, 1, f"{IH}:leave_things",
                        args={"name": name, "ok": ok, "write": write})
        outcome = run_task(task)
        if ok:
            assert outcome.output["seen"] == [] and outcome.output["cwd"] == os.getcwd()
    assert outcome.ok == ok
    kept = [p for p in _attempt_dirs(f"exe-{name}-{name}-1-")]
    if ok or not write:
        assert kept == []  # removed: nothing to inspect
        if not ok:
            assert "working directory kept" not in outcome.error.message
    else:
        assert len(kept) == 1 and f"working directory kept: {kept[0]}" in outcome.error.message
        assert (kept[0] / "result.txt").read_text().strip() == name
        _remove(kept[0])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=st.from_regex(r"[a-z]{3,8}", fullmatch=True), b=st.from_regex(r"[A-Z]{3,8}", fullmatch=True),
       order=st.booleans())
def test_property_16_isolation(a: str, b: str, order: bool, tmp_path_factory) -> None:
    """For any two attempts at once: neither sees the other's files or environment, nor what a
    handler left in the worker's environment."""
    rendezvous = tmp_path_factory.mktemp("rv")
    os.environ["LEAKED_BY_A_HANDLER"] = "x"  # what a misbehaving earlier handler leaves behind
    try:
        def attempt(name: str) -> dict:
            wait = f'touch {rendezvous}/{name}; while [ "$(ls {rendezvous} | wc -l)" -lt 2 ]; do sleep 0.01; done'
            command = f"echo {name} > mine-{name}.txt; export ALSO_{name}=1; {wait}; {SHELL_LOOK}"
            return run_task(_shell(name, command, {"MINE": name})).output

        names = [a, b] if order else [b, a]
        with ThreadPoolExecutor(2) as pool:
            results = dict(zip(names, pool.map(attempt, names)))
    finally:
        del os.environ["LEAKED_BY_A_HANDLER"]
    for me, other in ((a, b), (b, a)):
        out = results[me]["stdout"]
        cwd, files = out.splitlines()[0], out.splitlines()[1:-2]
        assert files == [f"mine-{me}.txt"], out
        assert f"MINE={me}" in out and f"MINE={other}" not in out
        names = set(out.splitlines()[-1].split())
        assert not {f"ALSO_{other}", "LEAKED_BY_A_HANDLER"} & names
        assert names <= set(SHELL_ENV_ALLOW) | {f"ALSO_{me}", "MINE", "TMPDIR", "PWD", "SHLVL", "_", "OLDPWD",
                                                "SOPFLOW_EXECUTION_ID", "SOPFLOW_STEP", "SOPFLOW_ATTEMPT"} | {
            n for n in names if n.startswith("LC_")}
        assert f"exe-{me}-{me}-1-" in cwd
    assert not list(_attempt_dirs("exe-"))  # both succeeded: nothing left behind


def _attempt_dirs(prefix: str) -> list[Path]:
    from runtime.isolation import attempts_root

    root = attempts_root()
    return sorted(p for p in root.iterdir() if p.name.startswith(prefix)) if root.exists() else []


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


@pytest.fixture(autouse=True)
def _own_attempts_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SOPFLOW_ATTEMPTS_DIR", str(tmp_path_factory.mktemp("attempts")))


@pytest.mark.ray
def test_attempts_on_ray_workers_do_not_see_each_other_or_a_leaked_environment(engine, sop_file) -> None:
    """Real Ray: a handler that pollutes its worker's environment does not reach later shell steps,
    and parallel shell steps each run in a fresh directory that is gone afterwards."""
    from tests.sop_builders import sop_text

    steps = "".join(f"""
          - id: look{i}
            uses: shell
            depends_on: [leak]
            env: {{MINE: "m{i}"}}
            run: 'echo m{i} > mine.txt; {SHELL_LOOK}'""" for i in range(3))
    path = sop_file(sop_text(f"""\
        steps:
          - id: leak
            uses: {IH}:leak_env
            with: {{name: SOPFLOW_TEST_LEAK, value: leaked}}{steps}
        """, name="isolated"))
    result = engine.result(engine.submit(path), timeout=120)
    for i in range(3):
        out = result["steps"][f"look{i}"]["stdout"]
        lines = out.splitlines()
        assert lines[1:-2] == ["mine.txt"] and f"MINE=m{i}" in out
        assert "SOPFLOW_TEST_LEAK" not in out and "RAY_" not in lines[-1]
        assert not Path(lines[0]).exists()  # removed after the success


def test_processes_a_shell_step_leaves_running_are_killed_when_it_ends(tmp_path) -> None:
    from tests.sop_builders import wait_for

    outcome = run_task(_shell("bg", f"sleep 60 >/dev/null 2>&1 & echo $! > {tmp_path}/pid"))
    assert outcome.ok
    pid = int((tmp_path / "pid").read_text())

    def gone() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] in ("Z", "X")  # dead, not yet reaped
        except OSError:
            return True

    assert wait_for(gone, timeout_s=10)


def test_a_background_child_holding_the_output_open_does_not_hold_the_step_up(tmp_path) -> None:
    """With pipes, a child still holding stdout made the step wait for it until its timeout."""
    task = _shell("bg-open", "sleep 60 & echo started")
    task.timeout_s = 20
    outcome = run_task(task)
    assert outcome.ok, outcome.error  # not a Timeout: the command ended, its child is killed
    assert outcome.output["stdout"].strip() == "started"
