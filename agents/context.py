"""What one agent run is given: the SOP, its data sources and the agent settings it asks for.

An :class:`AgentContext` is built from the engine's :class:`runtime.seams.AgentSessionSpec`
and is everything the agent may use — the builder (:mod:`agents.build`) makes the ADK
agent from it and from nothing else, so what the agent can reach is exactly what the
context says (properties 1 and 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from runtime.seams import AgentSessionSpec
from sop import Sop
from sop.model import AgentSpec, DataSource, Step


@dataclass(frozen=True)
class AgentContext:
    """One agent run's world.

    Attributes:
        execution_id: The execution.
        agent_id: ``<sop>/<execution>``.
        sop: The whole SOP.
        settings: The agent block (overrides given at submit applied).
        inputs: The inputs, secret values included (for credentials; never logged).
        secrets: Names of the secret inputs.
        data_sources: Every data source the SOP names, by name.
        tools: The MCP tools the agent may call itself, as ``(source, tool)``.
        steps: The steps the agent follows, in the SOP's order.
    """

    execution_id: str
    agent_id: str
    sop: Sop
    settings: AgentSpec
    inputs: dict[str, Any]
    secrets: tuple[str, ...]
    data_sources: dict[str, DataSource] = field(default_factory=dict)
    tools: tuple[tuple[str, str], ...] = ()
    steps: tuple[Step, ...] = ()

    @classmethod
    def from_spec(cls, spec: AgentSessionSpec) -> AgentContext:
        sop = spec.sop
        tools = tuple(tuple(name.split(".", 1)) for name in sop.agent.tools)  # validated: source.tool
        return cls(spec.execution_id, spec.agent_id or f"{sop.sop}/{spec.execution_id}", sop, sop.agent,
                   dict(spec.inputs), tuple(spec.secrets), dict(sop.data_sources), tools,  # type: ignore[arg-type]
                   tuple(sop.steps))

    @property
    def public_inputs(self) -> dict[str, Any]:
        """The inputs as the agent's instruction shows them: secret ones as ``***``."""
        return {k: ("***" if k in self.secrets else v) for k, v in self.inputs.items()}

    @property
    def secret_values(self) -> list[str]:
        """The secret inputs' values (to mask wherever they could show)."""
        return [str(self.inputs[k]) for k in self.secrets if self.inputs.get(k) not in (None, "")]

    def api_key(self) -> str | None:
        """The model's API key: from the secret input or the environment variable the SOP names."""
        if self.settings.api_key_input:
            value = self.inputs.get(self.settings.api_key_input)
            return str(value) if value not in (None, "") else None
        if self.settings.api_key_env:
            return os.environ.get(self.settings.api_key_env) or None
        return None
