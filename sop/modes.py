"""Which run mode fits an SOP, and changing an SOP's mode only when the new one fits.

An SOP runs as a System Design Run (a DAG: any acyclic graph fits) or as an
Agent Centric Run (one agent follows the SOP as a checklist, so its steps must
form simple sequences: no step joins branches, none fans out, and every step
keeps the default trigger rule); an agent-only SOP (no steps) only as an Agent
Centric Run. ``auto`` picks agent-centric when no step
declares a dependency and system design otherwise. Validation, submission and
:func:`change_mode` all decide through :func:`mode_fit`, so they give the same
reason for a refusal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sop._suggest import did_you_mean
from sop.errors import ModeError
from sop.model import Mode

if TYPE_CHECKING:
    from sop.model import Sop

MODES = tuple(m.value for m in Mode)


@dataclass(frozen=True, slots=True)
class ModeFit:
    """Whether a mode fits an SOP.

    Attributes:
        mode: The mode the SOP runs in, or ``None`` when the asked mode does not fit.
        reason: Why (for ``auto``, why it picked what it picked; for a refusal, what
            is in the way and what to do instead).
        step: The step that is in the way of the asked mode, when one is.
    """

    mode: Mode | None
    reason: str
    step: str | None = None


def mode_fit(declared: str, depends: Mapping[str, Sequence[str]],
             trigger_rules: Mapping[str, str]) -> ModeFit:
    """Whether ``declared`` fits the steps' dependencies (id -> ids) and trigger rules (id -> rule)."""
    has_deps = any(depends.values())
    if not depends and declared in (Mode.SYSTEM_DESIGN, "system_design"):
        return ModeFit(None, "the SOP has no steps, so there is no DAG to run: its agent follows agent.instruction; "
                       "run it in mode agent_centric")
    if declared in (Mode.AUTO, "auto"):
        if has_deps:
            return ModeFit(Mode.SYSTEM_DESIGN, "auto: steps declare dependencies, so they run as a DAG")
        return ModeFit(Mode.AGENT_CENTRIC, "auto: no step declares dependencies, so an agent follows the SOP")
    if declared == Mode.AGENT_CENTRIC and not depends:
        return ModeFit(Mode.AGENT_CENTRIC, "declared agent_centric; no steps: the agent follows agent.instruction")
    if declared == Mode.AGENT_CENTRIC:
        dependents: dict[str, int] = {}
        for deps in depends.values():
            for d in deps:
                dependents[d] = dependents.get(d, 0) + 1
        joins = [s for s, deps in depends.items() if len(deps) > 1]
        forks = [s for s, n in dependents.items() if n > 1]
        rules = [s for s, r in trigger_rules.items() if r != "all_success"]
        if joins or forks or rules:
            step = joins[0] if joins else forks[0] if forks else rules[0]
            what = (f"step '{step}' joins {len(depends[step])} branches" if joins else
                    f"step '{step}' fans out to {dependents[step]} steps" if forks else
                    f"step '{step}' has trigger_rule {trigger_rules[step]}")
            return ModeFit(None, f"agent_centric needs a checklist an agent can follow in order, but {what}; "
                           "use mode: system_design (or auto) for branching dependencies", step)
        return ModeFit(Mode.AGENT_CENTRIC, "declared agent_centric; the steps form a simple sequence")
    if declared in MODES:
        return ModeFit(Mode(declared), f"declared {declared}")
    return ModeFit(None, f"unknown mode {declared!r}; modes are {', '.join(MODES)}")


def choose_mode(declared: str, depends: Mapping[str, Sequence[str]],
                trigger_rules: Mapping[str, str]) -> tuple[Mode | None, str]:
    """The mode an SOP runs in, and why; ``(None, reason)`` when the declared mode cannot work."""
    fit = mode_fit(declared, depends, trigger_rules)
    return fit.mode, fit.reason


def sop_mode_fit(sop: Sop, mode: str) -> ModeFit:
    """:func:`mode_fit` of a loaded SOP's main steps (rollback steps run as a DAG in either mode)."""
    return mode_fit(mode, {s.id: list(s.depends_on) for s in sop.steps},
                    {s.id: s.trigger_rule.value for s in sop.steps})


def change_mode(sop: Sop, mode: str | Mode) -> Sop:
    """The SOP with ``mode`` as its declared mode, if that mode fits it.

    A pure function: ``sop`` itself never changes (SOP models are frozen), and a
    refused change returns nothing.

    Raises:
        ModeError: ``mode`` is not a mode, or it does not fit the SOP's steps; the
            message says what is in the way and which mode to use instead.
    """
    name = mode.value if isinstance(mode, Mode) else mode
    if not isinstance(name, str) or name not in MODES:
        raise ModeError(sop.sop, str(name), f"unknown mode {name!r}; modes are {', '.join(MODES)}",
                        suggestion=did_you_mean(name, MODES))
    fit = sop_mode_fit(sop, name)
    if fit.mode is None:
        raise ModeError(sop.sop, name, fit.reason, step=fit.step)
    return sop.model_copy(update={"mode": Mode(name)})
