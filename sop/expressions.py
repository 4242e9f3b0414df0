"""The safe expression language of ``when`` conditions and ``${{ ... }}`` references.

Expressions are Jinja2 *expressions* (not templates): ``steps.check.output.mismatches > 0``,
``inputs.region in ['eu', 'us'] and not steps.scan.output.clean``. They are parsed
once at validation, checked against an allow-list of syntax (no calls, no ``**``,
no dunder attributes, only the names ``inputs``, ``steps`` and ``execution`` — in a
trigger's ``filter`` and ``inputs`` only ``trigger`` — a fixed set of filters), and evaluated in Jinja2's immutable sandbox. The language
has no loops, no assignment and no way to reach Python objects, so SOP text is
never ``eval``-ed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Undefined, nodes
from jinja2.exceptions import TemplateSyntaxError, UndefinedError, SecurityError
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from sop.errors import SopflowError

ROOT_NAMES = ("inputs", "steps", "execution")
"""Names an expression may start from."""

TRIGGER_ROOTS = ("trigger",)
"""The names a trigger's ``filter`` and ``inputs`` may start from (``trigger.payload``, ``trigger.fire_time``):
a trigger fires before any step or input exists, so it reads only what the trigger gives."""

STEP_FIELDS = ("output", "status", "attempts", "error")
"""What ``steps.<id>`` exposes."""

FILTERS = (
    "abs", "bool", "capitalize", "default", "first", "float", "int", "join", "last",
    "length", "list", "lower", "max", "min", "replace", "round", "sort", "string",
    "sum", "title", "trim", "unique", "upper", "tojson", "unquoted",
)
"""Filters an expression may use. ``unquoted`` returns its value unchanged; only its place
matters: last in a ``run:`` reference, it pastes the value into the command as shell text
(see :mod:`sop.shell`)."""
TESTS = ("defined", "undefined", "none", "number", "string", "mapping", "sequence",
         "boolean", "true", "false", "eq", "ne", "gt", "ge", "lt", "le", "in")

_MAX_SEQUENCE = 100_000
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_JINJA_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "if", "else", "true", "false", "none",
                             "True", "False", "None"})
_REFERENCE = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)


class ExpressionError(SopflowError):
    """Raised when an expression does not parse, uses forbidden syntax, or fails to evaluate."""

    def __init__(self, message: str, expression: str, suggestion: str | None = None) -> None:
        super().__init__(message)
        self.expression = expression
        self.suggestion = suggestion

    def __reduce__(self) -> tuple:  # survive pickling across Ray with the original arguments
        return (type(self), (str(self), self.expression, self.suggestion))


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, with repetition capped so ``'x' * 10**9`` cannot eat memory."""

    intercepted_binops = frozenset({"*"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*" and isinstance(right, int) and isinstance(left, (str, list, tuple)):
            if len(left) * right > _MAX_SEQUENCE:
                raise SecurityError(f"repetition would build more than {_MAX_SEQUENCE:,} items")
        if operator == "*" and isinstance(left, int) and isinstance(right, (str, list, tuple)):
            if len(right) * left > _MAX_SEQUENCE:
                raise SecurityError(f"repetition would build more than {_MAX_SEQUENCE:,} items")
        return super().call_binop(context, operator, left, right)


def _guard(size: int) -> None:
    if size > _MAX_SEQUENCE:
        raise SecurityError(f"result would hold more than {_MAX_SEQUENCE:,} characters")


def _replace(value: Any, old: str, new: str, count: int | None = None) -> str:
    text = str(value)
    n = text.count(str(old)) if old else len(text) + 1
    _guard(len(text) + max(n if count is None else min(n, count), 0) * len(str(new)))
    return text.replace(str(old), str(new), -1 if count is None else count)


def _join(value: Any, d: str = "", attribute: Any = None) -> str:
    items = [str(v) for v in value]
    _guard(sum(map(len, items)) + len(str(d)) * max(len(items) - 1, 0))
    return str(d).join(items)


_ENV = _Environment(undefined=StrictUndefined, autoescape=False)
_ENV.globals.clear()
_ENV.filters = {k: v for k, v in _ENV.filters.items() if k in FILTERS}
_ENV.filters.update(replace=_replace, join=_join, unquoted=lambda value: value)
_ENV.tests = {k: v for k, v in _ENV.tests.items() if k in TESTS}

_ALLOWED_NODES = (
    nodes.Const, nodes.Name, nodes.Getattr, nodes.Getitem, nodes.Compare, nodes.Operand,
    nodes.And, nodes.Or, nodes.Not, nodes.Neg, nodes.Pos, nodes.Add, nodes.Sub, nodes.Mul,
    nodes.Div, nodes.FloorDiv, nodes.Mod, nodes.Concat, nodes.List, nodes.Tuple, nodes.Dict,
    nodes.Pair, nodes.CondExpr, nodes.Filter, nodes.Test, nodes.Slice,
)


@dataclass(frozen=True, slots=True)
class Reference:
    """A name an expression reads: ``("steps", "fetch")`` or ``("inputs", "account_id")``."""

    root: str
    name: str | None
    field: str | None = None


class Expression:
    """A parsed, checked expression, ready to evaluate any number of times.

    Parsing and checking happen at validation; the sandbox compiles the checked
    syntax tree to Python on the first evaluation, so validating an SOP stays cheap.
    """

    __slots__ = ("source", "references", "_ast", "_compiled")

    def __init__(self, source: str, references: tuple[Reference, ...], ast: nodes.Expr) -> None:
        self.source = source
        self.references = references
        self._ast = ast
        self._compiled: Any = None

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def evaluate(self, context: dict[str, Any]) -> Any:
        """Evaluate against ``{"inputs": ..., "steps": ..., "execution": ...}``.

        Raises:
            ExpressionError: a name is missing at run time or the sandbox refused.
        """
        if self._compiled is None:
            self._compiled = _compile(self._ast)
        try:
            result = self._compiled(context)
            if isinstance(result, Undefined):
                result._fail_with_undefined_error()
            return result
        except UndefinedError as e:
            raise ExpressionError(f"expression {self.source!r}: {e.message}", self.source) from e
        except SecurityError as e:
            raise ExpressionError(f"expression {self.source!r} was refused: {e}", self.source) from e
        except (TypeError, ValueError, ArithmeticError) as e:
            raise ExpressionError(f"expression {self.source!r} failed: {e}", self.source) from e

    @property
    def last_filter(self) -> str | None:
        """The filter applied last (``x | a | b`` -> ``"b"``), if the expression ends in one."""
        return self._ast.name if isinstance(self._ast, nodes.Filter) else None

    @property
    def filters(self) -> list[str]:
        """The name of every filter the expression applies, outermost first."""
        found = [self._ast] if isinstance(self._ast, nodes.Filter) else []
        return [f.name for f in (*found, *self._ast.find_all(nodes.Filter))]

    @property
    def step_refs(self) -> set[str]:
        return {r.name for r in self.references if r.root == "steps" and r.name}


@lru_cache(maxsize=4096)
def compile_expression(source: str, roots: tuple[str, ...] = ROOT_NAMES) -> Expression:
    """Parse and check one expression (the text between ``${{`` and ``}}``, or a ``when``).

    ``roots`` are the names it may start from (:data:`TRIGGER_ROOTS` in a trigger).

    Raises:
        ExpressionError: the expression does not parse or uses forbidden syntax.
    """
    text = source.strip()
    if not text:
        raise ExpressionError("expression is empty", source)
    if _DOTTED.fullmatch(text) and not _JINJA_KEYWORDS.intersection(text.split(".")):  # most references: skip the lexer, build the tree directly
        root, *attrs = text.split(".")
        node: nodes.Expr = nodes.Name(root, "load", lineno=1)
        for attr in attrs:
            node = nodes.Getattr(node, attr, "load", lineno=1)
        refs: list[Reference] = []
        _check(node, text, refs, roots)
        return Expression(text, tuple(refs), node)
    try:
        parser = Parser(_ENV, text, state="variable")
        ast = parser.parse_expression()
        if not parser.stream.eos:
            raise TemplateSyntaxError(
                f"unexpected {parser.stream.current.value!r} after the expression", 1)
    except TemplateSyntaxError as e:
        raise ExpressionError(f"expression {text!r} does not parse: {e.message}", source) from e
    refs: list[Reference] = []
    _check(ast, text, refs, roots)
    return Expression(text, tuple(refs), ast)


def _compile(ast: nodes.Expr) -> Any:
    ast.set_environment(_ENV)
    body = [nodes.Assign(nodes.Name("result", "store"), ast, lineno=1)]
    template = _ENV.from_string(nodes.Template(body, lineno=1))

    def run(context: dict[str, Any]) -> Any:
        ctx = template.new_context(context)
        for _ in template.root_render_func(ctx):
            pass
        return ctx.vars["result"]

    return run


def _check(node: nodes.Node, text: str, refs: list[Reference],
           roots: tuple[str, ...] = ROOT_NAMES) -> None:
    if isinstance(node, nodes.Call):
        raise ExpressionError(
            f"expression {text!r} calls a function; expressions can only read values, "
            "compare and combine them", text, "use a filter such as `| length` instead of a call")
    if isinstance(node, nodes.Pow):
        raise ExpressionError(f"expression {text!r} uses '**', which is not allowed", text)
    if not isinstance(node, _ALLOWED_NODES):
        raise ExpressionError(f"expression {text!r} uses {type(node).__name__}, which is not allowed",
                              text)
    if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
        raise ExpressionError(f"expression {text!r} reads private attribute {node.attr!r}", text)
    if (isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str) and node.arg.value.startswith("_")):
        raise ExpressionError(f"expression {text!r} reads private key {node.arg.value!r}", text)
    if isinstance(node, nodes.Filter) and node.name not in FILTERS:
        raise ExpressionError(f"expression {text!r} uses unknown filter {node.name!r}", text,
                              f"available filters: {', '.join(FILTERS)}")
    if isinstance(node, nodes.Test) and node.name not in TESTS:
        raise ExpressionError(f"expression {text!r} uses unknown test {node.name!r}", text)
    if isinstance(node, nodes.Name):
        if node.name not in roots:
            from sop._suggest import did_you_mean

            raise ExpressionError(
                f"expression {text!r} reads unknown name {node.name!r}; expressions start from "
                f"{', '.join(roots)}", text, did_you_mean(node.name, roots))
        refs.append(Reference(node.name, None))
        return
    chain = _attribute_chain(node, roots)
    if chain is not None:
        root, *rest = chain
        refs.append(Reference(root, rest[0] if rest else None, rest[1] if len(rest) > 1 else None))
        # Only the non-name parts (e.g. a computed subscript) need further checks.
        for child in _computed_parts(node):
            _check(child, text, refs, roots)
        return
    for child in node.iter_child_nodes():
        _check(child, text, refs, roots)


def _attribute_chain(node: nodes.Node, roots: tuple[str, ...] = ROOT_NAMES) -> list[str] | None:
    """``steps.fetch.output`` / ``steps['fetch'].output`` -> ``['steps', 'fetch', 'output']``."""
    parts: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem):
            if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                if node.arg.value.startswith("_"):
                    return None
                parts.append(node.arg.value)
            else:
                parts.clear()
            node = node.node
        else:
            break
    if not isinstance(node, nodes.Name) or node.name not in roots:
        return None
    return [node.name, *reversed(parts)]


def _computed_parts(node: nodes.Node) -> list[nodes.Node]:
    out: list[nodes.Node] = []
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getitem) and not (
            isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str)
        ):
            out.append(node.arg)
        node = node.node
    return out


def find_references(text: str) -> list[str]:
    """The expressions inside every ``${{ ... }}`` of a string."""
    return [m.group(1) for m in _REFERENCE.finditer(text)]


def is_template(value: Any) -> bool:
    return isinstance(value, str) and "${{" in value


def render(value: Any, context: dict[str, Any], roots: tuple[str, ...] = ROOT_NAMES) -> Any:
    """Substitute ``${{ }}`` references in a value (recursively through dicts and lists).

    A string that is exactly one reference yields the referenced value itself
    (a list stays a list); references inside longer strings are interpolated as text.
    """
    if isinstance(value, str):
        if "${{" not in value:
            return value
        whole = _whole_reference(value)
        if whole is not None:
            return compile_expression(whole, roots).evaluate(context)
        return _REFERENCE.sub(lambda m: _as_text(compile_expression(m.group(1), roots).evaluate(context)), value)
    if isinstance(value, dict):
        return {k: render(v, context, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context, roots) for v in value]
    return value


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _whole_reference(text: str) -> str | None:
    """The expression when ``text`` is exactly one ``${{ ... }}``, else None."""
    stripped = text.strip()
    m = _REFERENCE.match(stripped)
    if m is None or m.end() != len(stripped):
        return None
    return m.group(1)


def strip_braces(condition: str) -> str:
    """``"${{ a > 1 }}"`` -> ``"a > 1"``; a bare condition is returned as is."""
    whole = _whole_reference(condition)
    return whole if whole is not None else condition
