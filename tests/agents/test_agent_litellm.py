"""A whole Agent Centric Run through the LiteLLM path, against a local OpenAI-compatible server.

The server (tests/agents/fake_openai.py) answers with scripted tool calls: the agent runs the
SOP's step, records a decision, and finishes; a 429 on the way is waited out in the one retry
layer; the API key comes from a secret input and is in no event.
"""

from __future__ import annotations

import json
import os

import pytest

from runtime.status import ExecutionStatus
from tests.agents import fake_openai
from tests.agents.agent_sops import agent_sop

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # as agents.models does: no network on import
pytest.importorskip("litellm")

KEY = "sk-test-0123456789abcdef"


def _sop(url: str) -> str:
    return agent_sop([{"id": "hello", "run": "echo hello", "description": "Say hello."}], name="llm",
                     inputs={"key": {"type": "string", "secret": True, "required": True}},
                     agent={"model": "litellm:openai/fake", "base_url": url, "api_key_input": "key",
                            "temperature": 0.3, "max_tokens": 200})


def test_an_agent_run_through_litellm_follows_the_models_tool_calls(inproc) -> None:
    with fake_openai.serve() as server:
        server.push(
            fake_openai.tool_call("step_hello", {}, call_id="c1"),
            fake_openai.error(429, retry_after="0"),  # waited out once, in LimitedModel only
            fake_openai.tool_call("record_decision", {"step": "hello", "decision": "done",
                                                      "rationale": "it printed hello"}, call_id="c2"),
            fake_openai.tool_call("finish", {"summary": "said hello", "outputs": {"greeting": "hello"}},
                                  call_id="c3"),
        )
        eid = inproc.submit(_sop(server.url), {"key": KEY})
        view = inproc.wait(eid, timeout=120)
        bodies = [r.body for r in server.requests]
    assert view.status == ExecutionStatus.COMPLETED, view.agent
    assert view.steps["hello"].status.value == "succeeded"
    assert view.decisions[0]["decision"] == "done" and view.decisions[0]["rationale"] == "it printed hello"
    assert view.outputs["outputs"] == {"greeting": "hello"}  # the agent's own result (the SOP declares none)
    assert len(bodies) == 4  # three answers and the one 429: no SDK retried on its own
    assert all(b["temperature"] == 0.3 and 200 in (b.get("max_tokens"), b.get("max_completion_tokens")) for b in bodies)
    tools = {t["function"]["name"] for t in bodies[0]["tools"]}
    assert {"step_hello", "record_decision", "report_status", "escalate", "finish"} <= tools
    assert "Say hello." in json.dumps(bodies[0]["messages"])  # the SOP's guidance reached the model
    history = json.dumps([e.to_dict() for e in inproc.history(eid)])
    assert KEY not in history  # the key reached the server, never the log
    assert all(r.headers.get("Authorization", r.headers.get("authorization")) == f"Bearer {KEY}"
               for r in server.requests)


def test_an_agent_run_whose_provider_keeps_failing_ends_failed_and_says_why(inproc) -> None:
    with fake_openai.serve() as server:
        server.push(*[fake_openai.error(503, retry_after="0") for _ in range(10)])  # no real waiting
        view = inproc.wait(inproc.submit(_sop(server.url), {"key": KEY}), timeout=120)
    assert view.status == ExecutionStatus.FAILED
    reason = inproc.history(view.id)[-1].data["reason"]
    assert "ModelUnavailable" in reason or "503" in reason, reason
