"""One owner per state file: a second engine is refused, a crashed owner is taken over, a stale one is fenced."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.errors import StateStoreInUseError, StateStoreLostError
from runtime.eventlog import SqliteEventLog
from runtime.events import Event, EventKind
from tests.conftest import EXAMPLES, ROOT
from tests.sop_builders import wait_for


def event(execution_id: str, seq: int) -> Event:
    return Event(execution_id, seq, EventKind.STARTED, time.time(), None, None, {})


def try_owner(path: Path, owner: str, ttl: float = 15.0) -> SqliteEventLog | None:
    try:
        return SqliteEventLog(path, owner=owner, lease_ttl_s=ttl)
    except StateStoreInUseError:
        return None


# -- the lease, in one process ---------------------------------------------------------------------


def test_a_second_owner_is_refused_with_the_holder_and_how_to_take_over(tmp_path) -> None:
    path = tmp_path / "state.db"
    first = SqliteEventLog(path, owner="a")
    try:
        with pytest.raises(StateStoreInUseError) as refused:
            SqliteEventLog(path, owner="b")
        message = str(refused.value)
        assert f"{path} is in use by another sopflow engine" in message
        assert f"pid {os.getpid()}" in message and "since 20" in message and "host " in message
        assert "Stop that engine, or wait until its lease expires (15 s" in message
        first.append([event("e", 1)])  # the owner is undisturbed
        readers = SqliteEventLog.open_readonly(path)  # readers need no lease
        assert [e.seq for e in readers.read("e")] == [1]
        readers.close()
    finally:
        first.close()


def test_a_released_lease_is_taken_at_once_with_a_higher_token(tmp_path) -> None:
    path = tmp_path / "state.db"
    first = SqliteEventLog(path, owner="a")
    token = first.lease().token
    first.close()  # a clean shutdown releases the lease
    second = SqliteEventLog(path, owner="b")
    try:
        assert (second.lease().holder, second.lease().token) == ("b", token + 1)
    finally:
        second.close()


def test_an_idle_owner_keeps_its_lease_past_the_ttl(tmp_path) -> None:
    path = tmp_path / "state.db"
    owner = SqliteEventLog(path, owner="a", lease_ttl_s=0.3)
    try:
        t0 = owner.lease().heartbeat
        wait_for(lambda: owner.lease().heartbeat > t0 + 0.9, 10)  # three TTLs later, still renewed
        assert try_owner(path, "b", 0.3) is None
    finally:
        owner.close()


HOLDER = textwrap.dedent("""
    import sys, time
    from runtime.eventlog import SqliteEventLog
    from runtime.events import Event, EventKind
    log = SqliteEventLog(sys.argv[1], owner="stale", lease_ttl_s=0.5)
    print("holding", flush=True)
    for line in sys.stdin:
        try:
            log.append([Event("stale", int(line), EventKind.STARTED, time.time(), None, None, {})])
            print("committed", flush=True)
        except Exception as e:
            print(type(e).__name__, e, flush=True)
""")


def test_a_stalled_owner_is_taken_over_and_nothing_it_commits_afterwards_lands(tmp_path) -> None:
    path = tmp_path / "state.db"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "holding"
        holder.stdin.write("1\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "committed"
        os.kill(holder.pid, signal.SIGSTOP)  # a stall (GC pause, partition): its lease expires
        taker = wait_for(lambda: try_owner(path, "taker"), 30)
        try:
            taker.append([event("mine", 1)])
            os.kill(holder.pid, signal.SIGCONT)
            for seq in (2, 3):
                holder.stdin.write(f"{seq}\n")
                holder.stdin.flush()
                answer = holder.stdout.readline().strip()
                assert answer.startswith("StateStoreLostError lost ownership of the state file"), answer
                assert f"pid {os.getpid()}" in answer
            assert [e.seq for e in taker.read("stale")] == [1]  # nothing after the takeover landed
            assert taker.lease().holder == "taker"
            taker.append([event("mine", 2)])  # the new owner goes on
        finally:
            taker.close()
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.wait(10)


def test_a_lost_lease_is_reported_on_every_later_commit(tmp_path) -> None:
    path = tmp_path / "state.db"
    owner = SqliteEventLog(path, owner="a", lease_ttl_s=60)
    try:
        import sqlite3

        raw = sqlite3.connect(path)  # another engine's takeover, as it lands in the file
        raw.execute("UPDATE lease SET holder = 'b', host = 'elsewhere', pid = 1, token = token + 1")
        raw.commit()
        raw.close()
        for _ in range(2):
            with pytest.raises(StateStoreLostError, match="lost ownership of the state file .* to host "
                                                          "elsewhere pid 1 since"):
                owner.append([event("e", 1)])
        assert owner.read("e") == []
    finally:
        owner.close()


# -- two engines -----------------------------------------------------------------------------------


@pytest.mark.ray
def test_a_second_engine_on_the_same_cluster_is_refused_and_the_first_keeps_running(ray_cluster,
                                                                                      tmp_path) -> None:
    from runtime import Engine
    from runtime.config import EngineConfig
    from runtime.errors import EngineStartError
    from tests.sop_builders import own_engine

    with own_engine("sopflow-owner-a", tmp_path) as first:
        with pytest.raises(EngineStartError, match=r"in use by another sopflow engine \(host .* pid \d+ "
                                                   r"since .*Stop that engine, or wait"):
            Engine(namespace="sopflow-owner-b", config=EngineConfig(state=str(tmp_path / "state.db")))
        eid = first.submit(str(EXAMPLES / "hello-linear.yaml"))
        assert first.wait(eid, timeout=120).status.value == "completed"


@pytest.mark.ray
def test_another_cluster_is_refused_while_the_owner_runs_and_takes_over_once_it_is_killed(
        ray_cluster, tmp_path) -> None:
    from runtime import Engine
    from runtime.config import EngineConfig
    from runtime.errors import EngineStartError

    state, work = tmp_path / "state.db", tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    holder = subprocess.Popen([sys.executable, "-m", "tests.runtime.cluster_restart_driver", "hold", str(state),
                               str(work)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env=env, start_new_session=True)
    try:
        ids = json.loads(holder.stdout.readline())["ids"]  # its gated steps b are running
        config = EngineConfig(state=str(state), lease_ttl_s=2.0)
        with pytest.raises(EngineStartError, match="in use by another sopflow engine"):
            Engine(namespace="sopflow-owner-second", config=config)
        cli = subprocess.run([sys.executable, "-m", "runtime.cli", "run", str(EXAMPLES / "hello-linear.yaml")],
                             capture_output=True, text=True, cwd=ROOT, timeout=240,
                             env={**env, "SOPFLOW_STATE": str(state), "RAY_ADDRESS": "local"})  # a new cluster
        assert cli.returncode == 2, cli.stderr[-3000:]
        assert "in use by another sopflow engine" in cli.stderr and "Traceback" not in cli.stderr
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # the whole first cluster crashes
        holder.wait(30)

    def take_over() -> Engine | None:
        try:
            return Engine(namespace="sopflow-owner-second", config=config)
        except EngineStartError as e:
            assert "in use by another sopflow engine" in str(e)
            return None

    second = wait_for(take_over, 60)
    try:
        assert second.info()["recovery"]["executions"] == 2
        (work / "gate").write_text("open")
        for n, eid in enumerate(ids):
            assert second.wait(eid, timeout=120).status.value == "completed"
            runs = {s: len((work / str(n) / f"{s}.runs").read_text().splitlines()) for s in "abc"}
            assert runs == {"a": 1, "b": 2, "c": 1}  # only the attempt that died with the first cluster
    finally:
        second._conn.actors.kill()


# -- the fencing rule, for any sequence of takeovers -----------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(["take", "commit"]), st.integers(0, 2)), min_size=1,
                      max_size=12))
def test_only_the_latest_owner_ever_commits(tmp_path_factory, steps) -> None:
    """Owners 0..2 take the file over in any order (the holder's lease expired) and try to commit:
    a commit lands exactly when its owner is the one that took the file last."""
    import sqlite3

    path = tmp_path_factory.mktemp("fence") / "state.db"
    logs: dict[int, SqliteEventLog] = {}
    holder, landed, seq = None, [], 0
    try:
        for op, who in steps:
            if op == "take":
                if holder is not None and holder != who:  # the holder stalled: its lease expires
                    raw = sqlite3.connect(path)
                    raw.execute("UPDATE lease SET heartbeat = 1")
                    raw.commit()
                    raw.close()
                if who in logs:
                    logs[who].close()
                logs[who] = SqliteEventLog(path, owner=f"owner-{who}")
                holder = who
            elif who in logs:
                seq += 1
                try:
                    logs[who].append([event(f"by-{who}", seq)])
                    landed.append((who, seq))
                    assert who == holder
                except StateStoreLostError:
                    assert who != holder
        if not logs:
            return
        reader = SqliteEventLog.open_readonly(path)
        stored = sorted((w, e.seq) for w in range(3) for e in reader.read(f"by-{w}"))
        reader.close()
        assert stored == sorted(landed)
    finally:
        for log in logs.values():
            log.close()
