"""Record the saved histories in this directory by running real SOPs on a local Ray cluster.

Run once by hand from the repository root (see README.md here); not a test module.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
H = "python:tests.handlers_for_tests"
DEFAULTS = {"retry": {"max_attempts": 1}, "timeout_s": 60, "resources": {"cpu": 0.25}}


def linear_context() -> dict:
    """A chain whose steps take time, ids and dice from the context and pass them downstream."""
    return {"sop": "linear-context", "version": "1", "defaults": DEFAULTS,
            "inputs": {"name": {"type": "string", "default": "ada"}},
            "steps": [
                {"id": "first", "uses": f"{H}:stamp", "with": {"label": "${{ inputs.name }}"}},
                {"id": "second", "uses": f"{H}:stamp", "depends_on": ["first"],
                 "with": {"label": "second", "upstream": "${{ steps.first.output.id }}"}},
                {"id": "third", "uses": f"{H}:stamp", "depends_on": ["second"],
                 "with": {"label": "third", "upstream": "${{ steps.second.output.roll + steps.first.output.roll }}"}},
                {"id": "summary", "uses": f"{H}:echo", "depends_on": ["third"],
                 "with": {"value": {"ids": ["${{ steps.first.output.id }}", "${{ steps.third.output.id }}"],
                                    "rolls": "${{ steps.third.output.upstream }}"}}},
            ],
            "outputs": {"summary": "${{ steps.summary.output }}", "third": "${{ steps.third.output.id }}"}}


def fanout_retry(counter_dir: str) -> dict:
    """Fan-out/fan-in: a transient failure retried in the first step, a branch skipped by ``when``,
    a permanent failure that the SOP continues past, and a join that runs on all_done."""
    return {"sop": "fanout-retry", "version": "1",
            "defaults": {**DEFAULTS, "retry": {"max_attempts": 3, "initial_delay_s": 0.05}},
            "steps": [
                {"id": "fetch", "uses": f"{H}:flaky", "with": {"fail_times": 1, "counter_dir": counter_dir}},
                {"id": "left", "uses": f"{H}:stamp", "depends_on": ["fetch"],
                 "with": {"label": "left", "upstream": "${{ steps.fetch.output.attempt }}"}},
                {"id": "right", "uses": f"{H}:echo", "depends_on": ["fetch"],
                 "with": {"value": "right after attempt ${{ steps.fetch.output.attempt }}"}},
                {"id": "rare", "uses": f"{H}:echo", "depends_on": ["fetch"],
                 "when": "steps.fetch.output.attempt > 5", "with": {"value": "never"}},
                {"id": "doomed", "uses": f"{H}:fail", "depends_on": ["fetch"], "on_failure": "continue",
                 "retry": {"max_attempts": 1}, "with": {"message": "disk full", "kind": "permanent"}},
                {"id": "join", "uses": f"{H}:echo", "depends_on": ["left", "right", "rare", "doomed"],
                 "trigger_rule": "all_done",
                 "with": {"value": {"left": "${{ steps.left.output.roll }}", "right": "${{ steps.right.output }}",
                                    "rare": "${{ steps.rare.status }}", "doomed": "${{ steps.doomed.status }}"}}},
            ],
            "outputs": {"join": "${{ steps.join.output }}"}}


def nondeterministic() -> dict:
    """A step that reads ``random.random()`` directly, between two well-behaved ones."""
    return {"sop": "nondeterministic", "version": "1", "defaults": DEFAULTS,
            "steps": [
                {"id": "seed", "uses": f"{H}:stamp", "with": {"label": "seed"}},
                {"id": "draw", "uses": f"{H}:sneaky_random", "depends_on": ["seed"],
                 "with": {"label": "${{ steps.seed.output.label }}"}},
                {"id": "use", "uses": f"{H}:echo", "depends_on": ["draw"],
                 "with": {"value": "${{ steps.draw.output.value }}"}},
            ],
            "outputs": {"value": "${{ steps.use.output }}"}}


def main() -> int:
    from runtime import Engine
    from runtime.history import dumps_history

    tmp = Path(tempfile.mkdtemp(prefix="sopflow-histories-"))
    engine = Engine.local(num_cpus=2, dashboard=False, state=str(tmp / "state.db"))
    try:
        sops = {"linear-context": linear_context(), "fanout-retry": fanout_retry(str(tmp / "flaky")),
                "nondeterministic": nondeterministic()}
        for name, sop in sops.items():
            eid = engine.submit(json.dumps(sop))
            view = engine.wait(eid, timeout=120)
            text = dumps_history(engine.export(eid))
            (HERE / f"{name}.json").write_text(text + "\n")
            print(f"{name}: {eid} {view.status.value}, {len(text)} bytes")
    finally:
        engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
