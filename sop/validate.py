"""Load and validate an SOP in one pass, reporting every problem with its location.

Validation has two layers over the same parsed document: pydantic checks the
shape and types (unknown fields, wrong types, bad values), and the semantic
checks below look at the document as a whole (ids, dependencies, cycles,
expressions and what they reference, handlers, data sources, the run mode).
The semantic checks read the raw data defensively, so both layers report in the
same pass even when the document has type errors.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from sop._agent_checks import check_agent, check_agent_step, check_data_sources, check_tool, models_of
from sop._pydantic_errors import translate
from sop._suggest import did_you_mean
from sop._yaml import Loaded, format_path, load_text
from sop.errors import Problem, SopValidationError
from sop.expressions import STEP_FIELDS, ExpressionError, compile_expression, \
    find_references, strip_braces
from sop.graph import Graph, format_cycle
from sop.model import Mode, Sop
from sop.modes import choose_mode, mode_fit  # noqa: F401 - choose_mode: runtime.engine imports it from here
from sop.paths import SubSopPathError, resolve_sub_sop
from sop.shell import UNQUOTED
from sop.shell import placements as shell_placements
from sop.shell import problems as shell_problems

EXECUTION_FIELDS = ("id", "sop", "version", "mode")
BUILTIN_HANDLERS = ("shell", "agent")
_PYTHON_USES = re.compile(r"^python:([A-Za-z_][\w.]*):([A-Za-z_]\w*)$")
_MCP_USES = re.compile(r"^mcp:([^/]+)/(.+)$")


class HandlerCatalog(Protocol):
    """What validation needs to know about registered step handlers."""

    def has_handler(self, name: str) -> bool: ...

    def handler_names(self) -> Iterable[str]: ...

    # A catalog may also offer ``has_model(name)`` and ``model_names()`` (see
    # ``sop._agent_checks.ModelCatalog``); then plain model names are checked too.


@dataclass(slots=True)
class ValidationReport:
    """The outcome of validating one SOP: the model and graph when valid, and every problem."""

    file: str
    problems: list[Problem] = field(default_factory=list)
    sop: Sop | None = None
    graph: Graph | None = None
    mode: Mode | None = None
    mode_reason: str = ""

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def raise_for_problems(self) -> Sop:
        """The SOP, or :class:`SopValidationError` listing every problem."""
        if not self.ok or self.sop is None:
            raise SopValidationError(self.problems)
        return self.sop


def load(path: str | Path, *, handlers: HandlerCatalog | None = None) -> Sop:
    """Load and validate an SOP file.

    Raises:
        SopValidationError: with every problem found, each naming file, line and path.
    """
    return check_file(path, handlers=handlers).raise_for_problems()


def loads(text: str, *, file: str = "<string>", base_dir: str | Path | None = None,
          handlers: HandlerCatalog | None = None) -> Sop:
    """Load and validate SOP text (YAML or JSON). See :func:`load`."""
    return check_text(text, file=file, base_dir=base_dir, handlers=handlers).raise_for_problems()


def check_file(path: str | Path, *, handlers: HandlerCatalog | None = None, mode: str | None = None,
               _stack: tuple[str, ...] = ()) -> ValidationReport:
    """Validate an SOP file without raising; the report holds the problems.

    Args:
        path: The SOP file.
        handlers: Registered handlers (and models) to check names against; unchecked when None.
        mode: Check that the SOP fits this mode, as a submission asking for it would,
            instead of the mode the file declares.
    """
    p = Path(path)
    try:
        if p.stat().st_size > 64 * 1024 * 1024:
            raise OSError("file is far larger than any SOP")
        raw = p.read_bytes()
    except OSError as e:
        reason = e.strerror or str(e)
        return ValidationReport(str(path), [Problem(f"cannot read SOP file: {reason}", file=str(path),
                                                    code="unreadable")])
    return check_text(raw, file=str(path), base_dir=p.parent, handlers=handlers, mode=mode,
                      _stack=_stack + (str(p.resolve()),))


def check_text(text: str | bytes, *, file: str = "<string>", base_dir: str | Path | None = None,
               handlers: HandlerCatalog | None = None, mode: str | None = None,
               _stack: tuple[str, ...] = ()) -> ValidationReport:
    """Validate SOP text without raising; the report holds the problems. See :func:`check_file`."""
    loaded = load_text(text, file)
    report = ValidationReport(file, list(loaded.problems))
    if loaded.data is None:
        if not report.problems:
            report.problems.append(Problem("the file is empty; an SOP needs at least 'sop' and 'steps'",
                                           file=file, code="empty"))
        return report
    if not isinstance(loaded.data, dict):
        report.problems.append(Problem("an SOP is a mapping with 'sop', 'steps' and other fields, "
                                       f"not a {type(loaded.data).__name__}", file=file, line=1,
                                       column=1, code="wrong-type"))
        return report
    try:
        sop = Sop.model_validate(loaded.data)
    except ValidationError as e:
        sop = None
        report.problems.extend(translate(e, loaded, Sop))
    checker = _Checker(loaded, Path(base_dir) if base_dir else Path.cwd(), handlers, _stack, mode)
    checker.run()
    report.problems.extend(checker.problems)
    if sop is not None and report.ok:
        report.sop, report.graph = sop, checker.graph
        report.mode, report.mode_reason = checker.mode, checker.mode_reason
    report.problems.sort(key=lambda p: (p.line or 0, p.column or 0))
    return report


@lru_cache(maxsize=1024)
def _module_problem(module: str) -> str | None:
    """Why ``module`` cannot be found, or None. Finding a submodule imports its parent packages."""
    try:
        if importlib.util.find_spec(module) is None:
            return f"python module {module!r} cannot be found"
    except ImportError:
        return f"python module {module!r} cannot be found"
    except Exception as e:  # noqa: BLE001 - a broken parent package is the user's problem to see
        return f"python module {module!r} cannot be imported: {type(e).__name__}: {e}"
    return None


class _Checker:
    """The semantic checks, over the raw document."""

    def __init__(self, loaded: Loaded, base_dir: Path, handlers: HandlerCatalog | None,
                 stack: tuple[str, ...], requested_mode: str | None = None) -> None:
        self.loaded = loaded
        self.requested_mode = requested_mode
        self.data: dict[str, Any] = loaded.data
        self.base_dir = base_dir
        self.handlers = handlers
        self.stack = stack
        self.problems: list[Problem] = []
        self.graph: Graph | None = None
        self.mode: Mode | None = None
        self.mode_reason = ""

    def problem(self, path: tuple, message: str, *, code: str, suggestion: str | None = None,
                severity: str = "error") -> None:
        line, col = self.loaded.position(path)
        self.problems.append(Problem(message, path=format_path(path), file=self.loaded.file,
                                     line=line, column=col, code=code, suggestion=suggestion,
                                     severity=severity))  # type: ignore[arg-type]

    def run(self) -> None:
        steps = _dicts(self.data.get("steps"))
        rollback = _dicts(self.data.get("rollback"))
        main_ids = self._ids("steps", steps, {})
        rollback_ids = self._ids("rollback", rollback, main_ids)
        all_ids = main_ids | rollback_ids
        depends = self._dependencies("steps", steps, main_ids)
        rb_depends = self._dependencies("rollback", rollback, rollback_ids)
        self.graph = self._acyclic(depends, steps, "steps")
        rb_graph = self._acyclic(rb_depends, rollback, "rollback")
        inputs = self.data.get("inputs") if isinstance(self.data.get("inputs"), dict) else {}
        sources = self.data.get("data_sources") if isinstance(self.data.get("data_sources"), dict) else {}
        known = set(all_ids)
        for section, items, graph, visible in (("steps", steps, self.graph, set()),
                                               ("rollback", rollback, rb_graph, set(main_ids))):
            for i, step in items:
                sid = step.get("id")
                upstream = None  # unknown when the graph is broken: skip the upstream check
                if graph is not None and isinstance(sid, str) and sid in graph and _reads_steps(step):
                    upstream = graph.ancestors(sid) | visible
                self._expressions((section, i), step, upstream, known, inputs)
                self._handler((section, i), step, sources, inputs)
        outputs = self.data.get("outputs")
        if isinstance(outputs, dict):
            for key, value in outputs.items():
                self._templates(("outputs", key), value, None, None, known, inputs)
        check_data_sources(self.problem, sources, inputs)
        check_agent(self.problem, self.data.get("agent"), sources, inputs, models_of(self.handlers))
        if "triggers" in self.data:
            from sop._trigger_checks import check_triggers

            check_triggers(self.problem, self.data["triggers"], inputs)
        self._mode(depends, steps)

    # -- ids and dependencies -------------------------------------------------------------

    def _ids(self, section: str, steps: list[tuple[int, dict]], seen: dict[str, int]) -> dict[str, int]:
        ids: dict[str, int] = {}
        for i, step in steps:
            sid = step.get("id")
            if not isinstance(sid, str):
                continue
            if sid in seen or sid in ids:
                first = (f"{section}[{ids[sid]}]" if sid in ids else
                         "a step of the running SOP" if seen[sid] < 0 else f"steps[{seen[sid]}]")
                self.problem((section, i, "id"), f"step id {sid!r} is already used by {first}",
                             code="duplicate-step", suggestion="give every step a unique id")
                continue
            ids[sid] = i
        return ids

    def _dependencies(self, section: str, steps: list[tuple[int, dict]],
                      ids: dict[str, int]) -> dict[str, list[str]]:
        depends: dict[str, list[str]] = {}
        for i, step in steps:
            sid = step.get("id")
            if not isinstance(sid, str) or ids.get(sid) != i:
                continue
            raw = step.get("depends_on", [])
            raw = [raw] if isinstance(raw, str) else raw
            deps: list[str] = []
            for k, dep in enumerate(raw if isinstance(raw, list) else []):
                if not isinstance(dep, str):
                    continue
                if dep not in ids:
                    where = Path(self.loaded.file).name
                    self.problem((section, i, "depends_on", k),
                                 f"step {sid!r} depends on {dep!r}, which is not defined in {where}",
                                 code="unknown-dependency", suggestion=did_you_mean(dep, ids))
                elif dep not in deps:
                    deps.append(dep)
            depends[sid] = deps
        return depends

    def _acyclic(self, depends: dict[str, list[str]], steps: list[tuple[int, dict]],
                 section: str) -> Graph | None:
        graph = Graph.from_dependencies(depends)
        cycles = graph.find_cycles()
        if not cycles:
            return graph
        index = {s.get("id"): i for i, s in steps}
        for cycle in cycles:
            first = cycle[0]
            deps = steps_dep_list(steps, index[first])
            k = deps.index(cycle[1 % len(cycle)]) if cycle[1 % len(cycle)] in deps else 0
            self.problem((section, index[first], "depends_on", k),
                         f"dependency cycle: {format_cycle(cycle)}", code="cycle",
                         suggestion="remove one of these dependencies so the steps can be ordered")
        return None

    # -- expressions ----------------------------------------------------------------------

    def _expressions(self, where: tuple, step: dict, upstream: set[str] | None,
                     all_ids: set[str], inputs: dict) -> None:
        """Check a step's expressions; ``upstream`` (when known) is what it may read."""
        sid = step.get("id")
        when = step.get("when")
        if isinstance(when, str):
            self._expression(where + ("when",), strip_braces(when), sid, upstream, all_ids, inputs)
        elif when is not None and not isinstance(when, bool):
            self.problem(where + ("when",), "expected a condition (text), got " + type(when).__name__,
                         code="wrong-type")
        for key in ("with", "run", "env"):
            if key in step:
                self._templates(where + (key,), step[key], sid, upstream, all_ids, inputs)
        if isinstance(step.get("run"), str):
            self._command(where + ("run",), step["run"])

    def _command(self, path: tuple, command: str) -> None:
        """The shell-quoting rule of ``run:`` (see :mod:`sop.shell`)."""
        for message in shell_problems(command):
            self.problem(path, message, code="unsafe-shell-reference",
                         suggestion="pass the value through the step's env: (e.g. env: {NAME: "
                         "\"${{ inputs.name }}\"}) and read \"$NAME\" in the command")
        try:
            places = shell_placements(command)
        except ExpressionError:
            return  # reported by the expression checks
        for place in places:
            if place.unquoted:
                self.problem(path, f"${{{{{place.expression}}}}} is pasted into the command as shell text, "
                             "not quoted: a value holding shell syntax (;, $(...), quotes) will run",
                             code="unquoted-shell-reference", severity="warning",
                             suggestion="drop '| unquoted' unless this value is trusted shell text")

    def _templates(self, path: tuple, value: Any, sid: Any, upstream: set[str] | None,
                   all_ids: set[str], inputs: dict) -> None:
        if isinstance(value, str):
            if "${{" in value:
                for text in find_references(value):
                    self._expression(path, text, sid, upstream, all_ids, inputs)
                if value.count("${{") != len(find_references(value)):
                    self.problem(path, "'${{' is not closed by '}}'", code="bad-expression")
        elif isinstance(value, dict):
            for k, v in value.items():
                self._templates(path + (k,), v, sid, upstream, all_ids, inputs)
        elif isinstance(value, list):
            for k, v in enumerate(value):
                self._templates(path + (k,), v, sid, upstream, all_ids, inputs)

    def _expression(self, path: tuple, text: str, sid: Any, upstream: set[str] | None,
                    all_ids: set[str], inputs: dict) -> None:
        try:
            expr = compile_expression(text)
        except ExpressionError as e:
            self.problem(path, str(e), code="bad-expression", suggestion=e.suggestion)
            return
        if UNQUOTED in expr.filters and (path[2:] != ("run",) or expr.filters.count(UNQUOTED) > 1
                                         or expr.last_filter != UNQUOTED):
            self.problem(path, f"expression {expr.source!r} uses '| {UNQUOTED}' where it means nothing; "
                         f"it is allowed only as the last filter of a ${{{{ }}}} in a step's run:",
                         code="misplaced-unquoted", suggestion=f"remove '| {UNQUOTED}'")
        for ref in expr.references:
            if ref.root == "inputs" and ref.name is not None and ref.name not in inputs:
                self.problem(path, f"expression {expr.source!r} reads input {ref.name!r}, which the SOP "
                             "does not declare under 'inputs'", code="unknown-input",
                             suggestion=did_you_mean(ref.name, inputs) or f"declare it: inputs: {{{ref.name}: "
                             "{type: string}}")
            elif ref.root == "execution" and ref.name is not None and ref.name not in EXECUTION_FIELDS:
                self.problem(path, f"execution has no field {ref.name!r}", code="unknown-name",
                             suggestion=did_you_mean(ref.name, EXECUTION_FIELDS))
            elif ref.root == "steps" and ref.name is not None:
                self._step_reference(path, expr.source, ref.name, ref.field, sid, upstream, all_ids)

    def _step_reference(self, path: tuple, source: str, name: str, fld: str | None, sid: Any,
                        upstream: set[str] | None, all_ids: set[str]) -> None:
        if name not in all_ids:
            self.problem(path, f"expression {source!r} reads step {name!r}, which is not defined",
                         code="unknown-step", suggestion=did_you_mean(name, all_ids))
        elif name == sid:
            self.problem(path, f"step {sid!r} reads its own result in {source!r}", code="self-reference")
        elif upstream is not None and name not in upstream:
            self.problem(path, f"step {sid!r} reads steps.{name}, which does not run before it",
                         code="not-upstream",
                         suggestion=f"add {name!r} to depends_on of {sid!r}")
        if fld is not None and fld not in STEP_FIELDS:
            self.problem(path, f"steps.{name} has no field {fld!r}; it has {', '.join(STEP_FIELDS)}",
                         code="unknown-name", suggestion=did_you_mean(fld, STEP_FIELDS))

    # -- handlers, data sources, agent, mode ----------------------------------------------

    def _handler(self, where: tuple, step: dict, sources: dict, inputs: dict) -> None:
        uses = step.get("uses")
        if not isinstance(uses, str):
            return
        path = where + ("uses",)
        if uses == "agent":
            check_agent_step(self.problem, where, step, sources, inputs, models_of(self.handlers))
            return
        if uses in BUILTIN_HANDLERS:
            return
        if uses.startswith("python:"):
            m = _PYTHON_USES.match(uses)
            if not m:
                self.problem(path, f"expected python:<module>:<function>, got {uses!r}", code="bad-handler")
            elif (why := _module_problem(m.group(1))) is not None:
                self.problem(path, why, code="unknown-handler",
                             suggestion="check the spelling, and that the module is on PYTHONPATH "
                             "(run from the project directory or install it)")
        elif uses.startswith("mcp:"):
            m = _MCP_USES.match(uses)
            if not m:
                self.problem(path, f"expected mcp:<data source>/<tool>, got {uses!r}", code="bad-handler")
            else:
                check_tool(self.problem, path, m.group(1), m.group(2), sources)
        elif uses.startswith("sop:"):
            self._sub_sop(path, uses[4:])
        elif ":" in uses:
            self.problem(path, f"unknown handler kind {uses.split(':')[0]!r} in {uses!r}",
                         code="bad-handler", suggestion="use mcp:, python:, sop:, shell or a registered name")
        elif self.handlers is not None and not self.handlers.has_handler(uses):
            known = [*BUILTIN_HANDLERS, *self.handlers.handler_names()]
            self.problem(path, f"no step handler is registered as {uses!r}", code="unknown-handler",
                         suggestion=did_you_mean(uses, known) or "register it with @registry.handler, or "
                         "use python:<module>:<function>")

    def _sub_sop(self, path: tuple, ref: str) -> None:
        try:
            target = resolve_sub_sop(self.base_dir, ref)
        except SubSopPathError as e:
            self.problem(path, str(e), code="sub-sop-outside", suggestion=e.suggestion)
            return
        if not target.is_file():
            self.problem(path, f"sub-SOP file {ref!r} does not exist (looked at {target})",
                         code="unknown-handler")
            return
        if str(target) in self.stack:
            self.problem(path, f"sub-SOP {ref!r} includes itself (directly or through others)",
                         code="cycle")
            return
        sub = check_file(target, handlers=self.handlers, _stack=self.stack)
        if not sub.ok:
            self.problem(path, f"sub-SOP {ref!r} is invalid ({len(sub.problems)} problem(s) below)",
                         code="invalid-sub-sop")
            self.problems.extend(sub.problems)

    def _mode(self, depends: dict[str, list[str]], steps: list[tuple[int, dict]]) -> None:
        declared = self.requested_mode or self.data.get("mode", "auto")
        if not self.requested_mode and (not isinstance(declared, str) or declared not in Mode._value2member_map_
                                        or (not steps and declared != Mode.AGENT_CENTRIC)):
            return  # the schema layer reports it (a bad mode; no steps outside agent_centric)
        rules = {s["id"]: s.get("trigger_rule", "all_success") for _, s in steps
                 if isinstance(s.get("id"), str)}
        fit = mode_fit(declared, depends, rules)
        self.mode, self.mode_reason = fit.mode, fit.reason
        if self.requested_mode and fit.reason.startswith("declared "):
            self.mode_reason = "requested " + fit.reason.removeprefix("declared ")
        if fit.mode is None and self.requested_mode:
            # The words of a refused submission (runtime.engine), so both say the same.
            self.problem((), f"cannot run this SOP in mode {declared}: {fit.reason}", code="bad-mode")
        elif fit.mode is None:
            self.problem(("mode",), f"mode {declared} does not fit this SOP: {fit.reason}", code="bad-mode")


def steps_dep_list(steps: list[tuple[int, dict]], index: int) -> list[str]:
    for i, step in steps:
        if i == index:
            deps = step.get("depends_on", [])
            return [deps] if isinstance(deps, str) else [d for d in deps if isinstance(d, str)]
    return []


def _reads_steps(step: dict) -> bool:
    """Whether any expression of the step may mention ``steps`` (a cheap text test)."""
    return any("steps" in str(step.get(k, "")) for k in ("when", "with", "run", "env"))


def _dicts(value: Any) -> list[tuple[int, dict]]:
    return [(i, v) for i, v in enumerate(value) if isinstance(v, dict)] if isinstance(value, list) else []
