"""The offline model: a real ADK ``BaseLlm`` that follows the SOP deterministically, with no network.

It reads the SOP plan in the instruction (:mod:`agents.instruction`) and the
conversation so far, and answers the next moves — for every step whose dependencies
have settled, so independent steps run at once as in a DAG: record a decision at every decision
point (with the condition and its value as the rationale), run the next step through
its step tool, skip or halt what the SOP's rules skip or halt (reusing the engine's
own trigger rules, :func:`runtime.scheduling.verdict`, so both modes agree), and
finish with the SOP's outputs. It keeps no state of its own: every move is derived
from the request, so one instance serves any number of sessions, and a resumed or
replayed session gets the same moves.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.genai import types

from agents.instruction import read_plan
from runtime.scheduling import Verdict, verdict
from runtime.status import StepStatus
from sop.expressions import ExpressionError, compile_expression, render, strip_braces
from sop.model import TriggerRule

_ENDED = {"skip": StepStatus.SKIPPED, "halt": StepStatus.UPSTREAM_FAILED}


class OfflineModel(BaseLlm):
    """Follows the SOP in order; see the module docstring."""

    model: str = "offline"

    @classmethod
    def supported_models(cls) -> list[str]:
        return ["offline"]

    async def generate_content_async(self, llm_request: LlmRequest,
                                     stream: bool = False) -> AsyncGenerator[LlmResponse, None]:
        response = next_move(llm_request)
        prompt = _estimate_tokens(_instruction_text(llm_request)) + sum(
            _estimate_tokens(c.model_dump_json(exclude_none=True)) for c in llm_request.contents)
        answer = _estimate_tokens(response.content.model_dump_json(exclude_none=True)) if response.content else 0
        response.usage_metadata = types.GenerateContentResponseUsageMetadata(
            prompt_token_count=prompt, candidates_token_count=answer, total_token_count=prompt + answer)
        yield response


def _estimate_tokens(text: str) -> int:
    """About four characters a token, as for English text: budgets and metrics get a usable figure."""
    return (len(text) + 3) // 4


def next_move(llm_request: LlmRequest) -> LlmResponse:
    """The model's answer to ``llm_request``."""
    plan = read_plan(_instruction_text(llm_request))
    if plan is None:
        return _text("I have no SOP plan in my instruction, so there is nothing I can follow.")
    seen = _Conversation(llm_request.contents)
    if seen.finished:
        return _text("The SOP is done and its result was reported.")
    moves = _next_moves(plan, seen)
    if not moves:
        moves = [("finish", {"summary": _summary(plan, seen), "outputs": _outputs(plan, seen)})]
    return LlmResponse(content=types.Content(role="model", parts=[
        types.Part(function_call=types.FunctionCall(name=name, args=args)) for name, args in moves]))


def _next_moves(plan: dict[str, Any], seen: _Conversation) -> list[tuple[str, dict[str, Any]]]:
    """The calls to make now: one for every step whose dependencies have settled and which has not
    (independent steps go together, so they run at once as in a DAG); empty when every step has."""
    statuses: dict[str, StepStatus] = {s["id"]: StepStatus.PENDING for s in plan["steps"]}
    on_failure = {s["id"]: s.get("on_failure", "halt") for s in plan["steps"]}
    moves: list[tuple[str, dict[str, Any]]] = []
    for step in plan["steps"]:  # in SOP order, which lists a step after its dependencies
        sid = step["id"]
        result = seen.results.get(sid)
        decided = seen.decisions.get(sid)
        if result is not None and result.get("status") != "refused":
            statuses[sid] = _status(result.get("status"))
            continue
        if decided in _ENDED:
            statuses[sid] = _ENDED[decided]
            continue
        if result is not None:  # the engine refused it (say, a dependency that never ran): stop it here
            moves.append(("record_decision", {"step": sid, "decision": "halt",
                                              "rationale": f"the engine refused the step: {result.get('error')}"}))
            continue
        tolerated = {d for d in step["depends_on"] if statuses[d] == StepStatus.FAILED
                     and on_failure.get(d) == "continue"}
        what, why = verdict(TriggerRule.ALL_SUCCESS, step["depends_on"], statuses, tolerated)
        if what == Verdict.WAIT:
            continue
        if what in (Verdict.SKIP, Verdict.HALT):
            moves.append(("record_decision", {"step": sid, "decision": what.value,
                                               "rationale": f"the SOP's rule for its dependencies: {why}"}))
        elif step.get("when") and decided is None:
            moves.append(("record_decision", _condition(plan, seen, step)))
        else:
            moves.append((step["tool"], {}))
    return moves


def _condition(plan: dict[str, Any], seen: _Conversation, step: dict[str, Any]) -> dict[str, Any]:
    """The decision at a step's decision point, with the condition and its value as the rationale."""
    when = step["when"]
    try:
        value = bool(compile_expression(strip_braces(when)).evaluate(_context(plan, seen)))
    except ExpressionError as e:
        return {"step": step["id"], "decision": "halt",
                "rationale": f"its condition `{when}` cannot be evaluated ({e}); nothing in the SOP says more"}
    if value:
        return {"step": step["id"], "decision": "run", "rationale": f"the condition `{when}` holds"}
    return {"step": step["id"], "decision": "skip", "rationale": f"condition is false: {when}"}


def _context(plan: dict[str, Any], seen: _Conversation) -> dict[str, Any]:
    """What the SOP's expressions see, built from the step tools' answers (as the engine builds it)."""
    steps = {}
    for step in plan["steps"]:
        sid = step["id"]
        result = seen.results.get(sid) or {}
        status = result.get("status") or ("skipped" if seen.decisions.get(sid) == "skip" else "pending")
        steps[sid] = {"output": result.get("output"), "status": status, "attempts": result.get("attempts", 0),
                      "error": result.get("error")}
    return {"inputs": plan.get("inputs", {}), "steps": steps,
            "execution": {"sop": plan.get("sop"), "version": plan.get("version"), "mode": "agent_centric"}}


def _outputs(plan: dict[str, Any], seen: _Conversation) -> dict[str, Any]:
    ctx = _context(plan, seen)
    out: dict[str, Any] = {}
    for key, template in (plan.get("outputs") or {}).items():
        try:
            out[key] = render(template, ctx)
        except ExpressionError:
            continue  # the engine renders the SOP's outputs itself and reports what could not be
    return out


def _summary(plan: dict[str, Any], seen: _Conversation) -> str:
    if not plan["steps"]:  # an agent-only SOP: its procedure is free text, which this model does not act on
        return (f"SOP {plan.get('sop')} has no steps; the offline model does not act on a free-text "
                "instruction, so it finished with no outputs.")
    done = [f"{sid}: {r.get('status')}" for sid, r in seen.results.items()]
    skipped = [f"{sid}: {d}" for sid, d in seen.decisions.items() if d in _ENDED and sid not in seen.results]
    return f"Followed SOP {plan.get('sop')} step by step. " + "; ".join(done + skipped)


def _status(value: Any) -> StepStatus:
    try:
        return StepStatus(value)
    except ValueError:
        return StepStatus.FAILED


class _Conversation:
    """What the conversation says so far: step results, decisions, whether the run finished."""

    def __init__(self, contents: list[types.Content]) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.decisions: dict[str, str] = {}
        self.finished = False
        for content in contents:
            for part in content.parts or ():
                call, response = part.function_call, part.function_response
                if call is not None and call.name == "record_decision":
                    args = call.args or {}
                    if args.get("step"):
                        self.decisions[str(args["step"])] = str(args.get("decision", ""))
                if response is not None:
                    self._response(response.name or "", response.response or {})

    def _response(self, name: str, answer: dict[str, Any]) -> None:
        if name.startswith("step_") and isinstance(answer.get("step"), str):
            self.results[answer["step"]] = answer
        elif name == "finish" and answer.get("finished"):
            self.finished = True


def _instruction_text(llm_request: LlmRequest) -> str:
    si = llm_request.config.system_instruction if llm_request.config else None
    if si is None:
        return ""
    if isinstance(si, str):
        return si
    if isinstance(si, types.Content):
        return "".join(p.text or "" for p in si.parts or ())
    return json.dumps(si, default=str)


def _text(text: str) -> LlmResponse:
    return LlmResponse(content=types.Content(role="model", parts=[types.Part(text=text)]))
