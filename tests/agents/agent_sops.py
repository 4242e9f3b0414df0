"""SOPs for agent tests, and a hypothesis strategy of agent-centric SOPs (linear, with decision points)."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import strategies as st


def agent_sop(steps: list[dict[str, Any]], *, name: str = "agentic", inputs: dict[str, Any] | None = None,
              outputs: dict[str, str] | None = None, agent: dict[str, Any] | None = None,
              data_sources: dict[str, Any] | None = None) -> str:
    """An agent-centric SOP as YAML text."""
    doc: dict[str, Any] = {"sop": name, "mode": "agent_centric", "steps": steps}
    if inputs:
        doc["inputs"] = inputs
    if outputs:
        doc["outputs"] = outputs
    if agent:
        doc["agent"] = agent
    if data_sources:
        doc["data_sources"] = data_sources
    return yaml.safe_dump(doc, sort_keys=False)


@st.composite
def linear_sops(draw: Any, max_steps: int = 5) -> tuple[str, dict[str, int], list[dict[str, Any]]]:
    """A chain of shell steps, some behind a condition on the integer input ``n``, with guidance text.

    Returns the SOP text, its inputs, and the steps as data.
    """
    count = draw(st.integers(1, max_steps))
    steps: list[dict[str, Any]] = []
    for i in range(count):
        step: dict[str, Any] = {"id": f"s{i}", "run": f"echo step {i}",
                                "description": draw(st.sampled_from(["", f"Guidance for step {i}: check twice."]))}
        if i:
            step["depends_on"] = [f"s{i - 1}"]
        if draw(st.booleans()):
            step["when"] = f"inputs.n > {draw(st.integers(0, 9))}"
        steps.append(step)
    n = draw(st.integers(0, 9))
    return agent_sop(steps, inputs={"n": {"type": "integer", "default": 0}}), {"n": n}, steps
