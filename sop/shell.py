"""Rendering a step's ``run:`` command so interpolated values reach the shell as data.

The rule: every ``${{ }}`` in ``run:`` is replaced by its value *quoted for the
place it stands in*, so the shell sees exactly the value's text and never runs
any part of it:

- outside quotes (``echo ${{ inputs.name }}``): the value becomes one shell word
  (:func:`shlex.quote`);
- inside ``"..."``: ``\\``, ``$``, ````` and ``"`` are escaped;
- inside ``'...'``: each ``'`` becomes ``'\\''``.

Text values are used as they are; ``None`` is empty; booleans are ``true`` /
``false``; lists and dicts are JSON. A value holding a NUL character cannot be
passed to a process at all and is refused (:class:`CommandError`).

Places where no quoting can make a value safe (inside `````...`````,
``$((...))``, ``${...}``, a comment, or a here-document body) are refused when
the SOP is validated; the fix is to pass the value through the step's ``env:``
and read ``"$NAME"`` in the command.

Quoting makes a value one argument of the command; a command that runs its
arguments as code (``eval``, ``sh -c``, ``ssh host``) still runs it, as it would
any argument. The rule is written for POSIX ``sh`` (dash, or bash as ``sh``).

The one way out is explicit: ``${{ inputs.flags | unquoted }}`` pastes the value
as shell text, for the rare value the SOP author trusts to be shell syntax.
``sopflow validate`` lists every such place.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sop.expressions import _REFERENCE, ExpressionError, compile_expression, render

UNQUOTED = "unquoted"
"""The filter that opts a ``run:`` reference out of quoting."""

# A NUL marks where each reference stands; a command holding a NUL of its own yields more
# places than references, and then no place is trusted (see placements).
_PLACEHOLDER = "\0"
_WORD_START = frozenset(" \t\n;&|()<>")
_UNSAFE = {"escaped": "right after a backslash", "bq": "inside `...`", "arith": "inside $((...))",
           "param": "inside ${...}",
           "comment": "in a comment", "heredoc": "in a here-document",
           "unknown": "where sopflow cannot tell how the shell reads it"}


class CommandError(ExpressionError):
    """Raised when a ``run:`` command cannot be rendered with its values kept as data."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one ``${{ }}`` of a command stands.

    Attributes:
        expression: The text between ``${{`` and ``}}``.
        context: ``word`` (unquoted), ``double``, ``single``, or a reason the place is unsafe.
        unquoted: The expression ends in ``| unquoted``.
    """

    expression: str
    context: str
    unquoted: bool

    @property
    def safe(self) -> bool:
        return self.context in ("word", "double", "single")


@lru_cache(maxsize=1024)
def placements(command: str) -> tuple[Placement, ...]:
    """Where each ``${{ }}`` of ``command`` stands, in order (raises for a bad expression)."""
    exprs = [m.group(1) for m in _REFERENCE.finditer(command)]
    contexts = _contexts(_REFERENCE.sub(_PLACEHOLDER, command))
    if len(contexts) != len(exprs):  # the command holds a NUL of its own: trust no place
        contexts = ["unknown"] * len(exprs)
    return tuple(Placement(e, c, is_unquoted(e)) for e, c in zip(exprs, contexts))


def is_unquoted(expression: str) -> bool:
    """True when ``expression`` ends in the ``| unquoted`` filter (the opt-out)."""
    return compile_expression(expression).last_filter == UNQUOTED


def problems(command: str) -> list[str]:
    """What is wrong with a ``run:`` command's references, worded for ``sopflow validate``."""
    out = []
    try:
        places = placements(command)
    except ExpressionError:
        return []  # the expression checks report these
    for p in places:
        if not p.safe and not p.unquoted:
            out.append(f"${{{{{p.expression}}}}} stands {_UNSAFE[p.context]}, where its value cannot be "
                       "quoted as data")
    return out


def render_command(command: str, context: dict[str, Any], *, step: str) -> str:
    """``command`` with every ``${{ }}`` replaced by its value, quoted for where it stands.

    Raises:
        CommandError: a value holds a NUL character, or a reference stands where it cannot be quoted.
        ExpressionError: an expression fails to evaluate.
    """
    if "${{" not in command:
        return command
    places = iter(placements(command))

    def substitute(match: re.Match[str]) -> str:
        place = next(places)
        value = compile_expression(match.group(1)).evaluate(context)
        text = as_shell_text(value)
        if "\0" in text:
            raise CommandError(
                f"step {step!r}: the value of ${{{{{place.expression}}}}} in run contains a NUL character, "
                "which no command can receive; remove it from the input or output that supplies it",
                place.expression)
        if place.unquoted:
            return text
        if not place.safe:
            raise CommandError(f"step {step!r}: ${{{{{place.expression}}}}} stands {_UNSAFE[place.context]} "
                               "in run, where its value cannot be quoted; pass it through env: and read "
                               "\"$NAME\" instead", place.expression)
        return _QUOTE[place.context](text)

    return _REFERENCE.sub(substitute, command)


def render_env(env: dict[str, Any], context: dict[str, Any], *, step: str) -> dict[str, Any]:
    """A step's ``env:`` with its references rendered (values reach the process as data already).

    Raises:
        CommandError: a value holds a NUL character, which no environment variable can carry.
    """
    rendered = render(env, context)
    for name, value in rendered.items():
        if "\0" in as_shell_text(value):
            raise CommandError(f"step {step!r}: the value of env {name} contains a NUL character, which no "
                               "environment variable can carry; remove it from the input or output that "
                               "supplies it", str(env.get(name)))
    return rendered


def as_shell_text(value: Any) -> str:
    """The text a value stands for in a command (before quoting)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return str(value)


def _double(text: str) -> str:
    # Inside "...", a backslash escapes exactly these four; a newline stays literal
    # (escaping it would make a line continuation, which the shell removes).
    return re.sub(r'([\\$`"])', r"\\\1", text)


_QUOTE: dict[str, Callable[[str], str]] = {
    "word": shlex.quote,
    "double": _double,
    "single": lambda text: text.replace("'", "'\\''"),
}


def _contexts(text: str) -> list[str]:
    """The quoting context at each placeholder of ``text``, by a POSIX sh lexer.

    The lexer tracks what changes how a shell reads the following characters:
    quotes, backslashes, ``$(``, ``$((``, ``${``, backquotes, comments and
    here-documents. It need not understand the rest of the grammar: quoting
    depends only on these.
    """
    out: list[str] = []
    stack: list[list[Any]] = [["top", 0]]  # frame: [kind, paren depth]
    heredocs: list[tuple[str, bool]] = []  # (delimiter, strip tabs) waiting for the next newline
    i, n = 0, len(text)
    lost = False  # past a construct this lexer cannot follow: no later place is trusted
    escaped_to = -1  # the index just past the last backslash-escaped character

    def starts_word(at: int) -> bool:
        """Whether a word starts at ``at``: after a blank or operator that was not escaped."""
        return at == 0 or (text[at - 1] in _WORD_START and at != escaped_to)

    while i < n:
        c = text[i]
        kind = stack[-1][0]
        if c == _PLACEHOLDER:
            out.append("unknown" if lost else _classify(stack))
            i += 1
            continue
        if kind == "single":
            if c == "'":
                stack.pop()
            i += 1
            continue
        if kind == "comment":
            if c == "\n":
                stack.pop()
                continue  # the newline may start pending here-documents
            i += 1
            continue
        if c == "\\":
            if text.startswith(_PLACEHOLDER, i + 1):  # an escaped reference: its first character would be literal
                out.append("escaped")
            i += 2
            escaped_to = i  # an escaped blank is part of a word: it starts none
            continue
        if kind == "double":
            if c == '"':
                stack.pop()
            elif c == "`":
                stack.append(["bq", 0])
            elif c == "$" and (opened := _substitution_at(text, i)):
                stack.append([opened[0], 0])
                i += opened[1]
            i += 1
            continue
        if kind == "bq":  # `...` ends at the first unescaped backquote, quotes or not
            if c == "`":
                stack.pop()
            i += 1
            continue
        # top, cmd, param, arith: unquoted shell text
        if c == "$" and text.startswith(("$'", "$["), i):
            lost = True  # bash's $'...' quoting and $[...] arithmetic: dash reads them differently
        elif (kind == "cmd" or any(f[0] == "cmd" for f in stack)) and _word_at(text, i, "case") and starts_word(i):
            lost = True  # a case pattern's ')' would end $( ) early in this lexer's eyes
        if c == "'":
            stack.append(["single", 0])
        elif c == '"':
            stack.append(["double", 0])
        elif c == "`":
            stack.append(["bq", 0])
        elif c == "$" and (opened := _substitution_at(text, i)):
            stack.append([opened[0], 0])
            i += opened[1]
        elif c == "(" and text.startswith("((", i) and kind in ("top", "cmd") and starts_word(i):
            stack.append(["arith", 0])  # bash's (( ... )) evaluates its text as arithmetic
            i += 1
        elif c == "#" and kind in ("top", "cmd") and starts_word(i):
            stack.append(["comment", 0])
        elif c == "(" and kind in ("cmd", "arith"):
            stack[-1][1] += 1
        elif c == ")" and kind in ("cmd", "arith"):
            if stack[-1][1] == 0:
                stack.pop()
                if kind == "arith" and text.startswith(")", i + 1):
                    i += 1
                elif kind == "arith":
                    # "$((" that does not close with "))" is "$(" then "(" to a shell (a command
                    # substitution of a subshell): where it really ends, this lexer cannot tell.
                    lost = True
            else:
                stack[-1][1] -= 1
        elif c == "}" and kind == "param":
            stack.pop()
        elif c == "<" and text.startswith("<<", i) and kind in ("top", "cmd"):
            i = _heredoc_operator(text, i, heredocs, out)
            continue
        elif c == "\n" and heredocs and kind in ("top", "cmd"):
            i = _heredoc_bodies(text, i + 1, heredocs, out)
            heredocs.clear()
            continue
        i += 1
    return out


def _word_at(text: str, i: int, word: str) -> bool:
    end = i + len(word)
    return (text.startswith(word, i) and (i == 0 or text[i - 1] in _WORD_START)
            and (end == len(text) or text[end] in _WORD_START))


def _classify(stack: list[list[Any]]) -> str:
    kinds = [frame[0] for frame in stack]
    for unsafe in ("bq", "arith", "param", "comment", "heredoc"):
        if unsafe in kinds:
            return unsafe
    return {"top": "word", "cmd": "word", "double": "double", "single": "single"}[kinds[-1]]


def _heredoc_operator(text: str, i: int, heredocs: list[tuple[str, bool]], out: list[str]) -> int:
    """Read ``<<[-] WORD`` at ``i``; remember the delimiter; return where the word ends."""
    i += 2
    strip = text.startswith("-", i)
    i += strip
    while i < len(text) and text[i] in " \t":
        i += 1
    start = i
    while i < len(text) and text[i] not in _WORD_START:
        i += 1
    out.extend(["heredoc"] * text.count(_PLACEHOLDER, start, i))
    heredocs.append((text[start:i].replace("'", "").replace('"', "").replace("\\", ""), strip))
    return i


def _heredoc_bodies(text: str, i: int, heredocs: list[tuple[str, bool]], out: list[str]) -> int:
    """Skip the bodies of pending here-documents from ``i``; a reference inside one is unsafe."""
    for delimiter, strip in heredocs:
        while i < len(text):
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            line = text[i:end]
            i = end + 1
            if (line.lstrip("\t") if strip else line) == delimiter:
                break
            out.extend(["heredoc"] * line.count(_PLACEHOLDER))
    return i


def _substitution_at(text: str, i: int) -> tuple[str, int] | None:
    """The kind of ``$`` substitution opening at ``text[i]`` and how many characters past ``$`` it takes."""
    if text.startswith("$((", i):
        return "arith", 2
    if text.startswith("$(", i):
        return "cmd", 1
    if text.startswith("${", i):
        return "param", 1
    return None
