"""Values interpolated into a ``run:`` command reach the shell as data, never as shell syntax."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sop import check_text
from sop.shell import CommandError, placements, render_command

# Any code point a process argument can carry: not NUL, not a lone surrogate (no UTF-8 form).
TEXT_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")
# Fragments a hostile value would use, mixed with arbitrary text (every code point but NUL).
HOSTILE = st.sampled_from([
    "'", '"', "\\", "`touch pwned`", "$(touch pwned)", "; touch pwned", "&& touch pwned #", "\n touch pwned\n",
    "| touch pwned", "$HOME", "${HOME}", "*", "~", "EOF", "'\\''", "\"$(touch pwned)\"", " ", "\t", "-n", "\r",
    "é", "🙂", "\u202e", "#",
])
VALUES = st.lists(st.one_of(st.text(TEXT_CHARS), HOSTILE), max_size=8).map("".join)

# (template, what printf should print for value v): one per quoting context the renderer handles.
TEMPLATES = [
    ("printf '%s' ${{ inputs.v }}", lambda v: v),
    ("printf '%s' \"<${{ inputs.v }}>\"", lambda v: f"<{v}>"),
    ("printf '%s' '<${{ inputs.v }}>'", lambda v: f"<{v}>"),
    ("printf '%s' pre${{ inputs.v }}post", lambda v: f"pre{v}post"),
    # command substitution drops trailing newlines: that is the shell's rule, not a leak
    ("printf '%s' \"$(printf '%s' ${{ inputs.v }})\"", lambda v: v.rstrip("\n")),
]


def run_sh(command: str, cwd: str) -> str:
    proc = subprocess.run(["/bin/sh", "-c", command], capture_output=True, cwd=cwd, timeout=10,
                          env={"PATH": os.environ["PATH"], "HOME": "/nonexistent-home"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=VALUES, which=st.integers(0, len(TEMPLATES) - 1))
def test_any_interpolated_value_reaches_the_command_exactly_and_nothing_else_runs(value: str, which: int) -> None:
    template, expected = TEMPLATES[which]
    command = render_command(template, {"inputs": {"v": value}}, step="s")
    with tempfile.TemporaryDirectory() as cwd:
        out = run_sh(command, cwd)
        assert os.listdir(cwd) == []  # no `touch pwned` ran
    assert out == expected(value)


@settings(max_examples=200, deadline=None)
@given(value=st.recursive(st.none() | st.booleans() | st.integers() | st.text(TEXT_CHARS),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                      max_size=3),
                          max_leaves=6))
def test_any_structured_value_is_one_shell_word(value: object) -> None:
    command = render_command("printf '%s|' ${{ inputs.v }}", {"inputs": {"v": value}}, step="s")
    with tempfile.TemporaryDirectory() as cwd:
        assert run_sh(command, cwd).count("|") >= 1
        assert os.listdir(cwd) == []
    assert command.startswith("printf '%s|' ") and placements("printf '%s|' ${{ inputs.v }}")[0].context == "word"


COMMON = st.sampled_from(["echo ", "printf %s ", " ", "'", '"', "$(", ")", ";", "a", "=", "|", "\n", "x'y'z"])
RARE = st.sampled_from([
    "`", "(", "${X:-", "}", "$((", "))", "#", "\\", "cat <<EOF\n", "\nEOF\n", "cat <<-'E'\n", "\n\tE\n",
    "case a in a) ", ";; esac", "$'", "((", "$[", "]",
])


@st.composite
def templates(draw: st.DrawFn) -> list[str]:
    """Shell text around one to three references: mostly quoting, sometimes the rarer constructs."""
    parts = draw(st.lists(st.one_of(COMMON, COMMON, COMMON, RARE), max_size=12))
    for _ in range(draw(st.integers(1, 3))):
        parts.insert(draw(st.integers(0, len(parts))), "REF")
    return parts
PAYLOAD = "x'\"`touch pwned`\"';$(touch pwned);touch pwned\n touch pwned #\\\nEOF\nE\ntouch pwned\n"


# sopflow runs /bin/sh; where that is bash (RHEL, macOS), bash reads the same command
SHELLS = [["/bin/sh", "-c"], *([["bash", "--posix", "-c"]] if shutil.which("bash") else [])]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=templates())
def test_for_any_command_template_a_value_either_is_refused_or_runs_nothing(shell: list[str],
                                                                             parts: list[str]) -> None:
    """Whatever shell the template holds around a reference, the value's own syntax never runs."""
    template = "".join(parts).replace("REF", "${{ inputs.v }}")
    try:
        command = render_command(template, {"inputs": {"v": PAYLOAD}}, step="s")
    except CommandError:
        return  # refused: nothing runs at all
    with tempfile.TemporaryDirectory() as cwd:
        try:
            subprocess.run([*shell, command], capture_output=True, cwd=cwd, timeout=5,
                           stdin=subprocess.DEVNULL, env={"PATH": os.environ["PATH"]})
        except subprocess.TimeoutExpired:
            pass
        assert os.listdir(cwd) == [], f"the value ran as shell syntax in {template!r}"


def test_lists_and_dicts_are_rendered_as_json_then_quoted() -> None:
    ctx = {"inputs": {"v": ["a b", {"k": "it's"}], "n": None, "t": True}}
    with tempfile.TemporaryDirectory() as cwd:
        out = run_sh(render_command("printf '%s\\n' ${{ inputs.v }} x${{ inputs.n }}x ${{ inputs.t }}", ctx,
                                    step="s"), cwd)
    assert out.splitlines() == ['["a b",{"k":"it\'s"}]', "xx", "true"]


def test_a_value_with_a_nul_character_is_refused_naming_the_step_and_the_reference() -> None:
    with pytest.raises(CommandError) as err:
        render_command("echo ${{ inputs.name }}", {"inputs": {"name": "a\0b"}}, step="greet")
    assert "step 'greet'" in str(err.value) and "inputs.name" in str(err.value) and "NUL" in str(err.value)


def test_an_env_value_with_a_nul_character_is_refused_naming_the_step_and_the_variable() -> None:
    from sop.shell import render_env

    assert render_env({"NAME": "${{ inputs.name }}"}, {"inputs": {"name": "a b"}}, step="greet") == {"NAME": "a b"}
    with pytest.raises(CommandError, match="step 'greet': the value of env NAME contains a NUL"):
        render_env({"NAME": "${{ inputs.name }}"}, {"inputs": {"name": "a\0b"}}, step="greet")


def test_unquoted_pastes_the_value_as_shell_text() -> None:
    command = render_command("ls ${{ inputs.flags | unquoted }} /", {"inputs": {"flags": "-l -a"}}, step="s")
    assert command == "ls -l -a /"


@pytest.mark.parametrize("command, context", [
    ("echo `echo ${{ inputs.v }}`", "bq"),
    ("echo $(( ${{ inputs.v }} + 1 ))", "arith"),
    ("echo ${X:-${{ inputs.v }}}", "param"),
    ("echo hi # ${{ inputs.v }}", "comment"),
    ("cat <<EOF\nname: ${{ inputs.v }}\nEOF", "heredoc"),
    ("cat <<-'END'\n\t${{ inputs.v }}\n\tEND", "heredoc"),
    ("echo \\${{ inputs.v }}", "escaped"),
    ("x=$(case $a in b) echo ${{ inputs.v }};; esac)", "unknown"),
    # "$((" not closed by "))" is "$(" + "(" to sh: found by the property above (it ran the value)
    ("echo echo echo $(($())${{ inputs.v }}))", "unknown"),
    # an escaped blank starts no word, so no comment: the here-document is real (found by the property)
    ("\\ #cat <<EOF\n${{ inputs.v }}", "heredoc"),
    ("(( x = ${{ inputs.v }} ))", "arith"),
    ("echo $[ ${{ inputs.v }} ]", "unknown"),
])
def test_places_where_no_quoting_is_safe_are_recognised(command: str, context: str) -> None:
    assert placements(command)[0].context == context
    with pytest.raises(CommandError, match="env:"):
        render_command(command, {"inputs": {"v": "x"}}, step="s")


def test_quoting_context_comes_back_after_a_here_document_and_a_comment() -> None:
    command = "cat <<EOF\nbody\nEOF\n# note\necho ${{ inputs.v }} \"${{ inputs.v }}\" 'a#${{ inputs.v }}'"
    assert [p.context for p in placements(command)] == ["word", "double", "single"]


# -- validation --------------------------------------------------------------------------------

SOP = "sop: t\ninputs:\n  v: {type: string}\nsteps:\n  - id: a\n    run: %s\n"


def test_validate_refuses_a_reference_where_it_cannot_be_quoted_with_its_location() -> None:
    report = check_text(SOP % '"echo `echo ${{ inputs.v }}`"', file="t.yaml")
    errors = [p for p in report.problems if p.severity == "error"]
    assert [p.code for p in errors] == ["unsafe-shell-reference"]
    p = errors[0]
    assert (p.file, p.line, p.path) == ("t.yaml", 6, "steps[0].run") and p.column is not None
    assert "inside `...`" in p.message and "env:" in (p.suggestion or "")


def test_validate_shows_every_unquoted_opt_out_as_a_warning() -> None:
    report = check_text(SOP % '"ls ${{ inputs.v | unquoted }}"', file="t.yaml")
    assert report.ok
    [p] = report.problems
    assert (p.severity, p.code, p.path) == ("warning", "unquoted-shell-reference", "steps[0].run")
    assert "inputs.v | unquoted" in p.message


@pytest.mark.parametrize("where", [
    '"ls ${{ inputs.v | unquoted | upper }}"',
    '"ls ${{ (inputs.v | unquoted) ~ \'x\' }}"',
])
def test_validate_refuses_unquoted_anywhere_but_last_in_run(where: str) -> None:
    report = check_text(SOP % where, file="t.yaml")
    assert "misplaced-unquoted" in [p.code for p in report.problems]
    for field in ("env: {X: '${{ inputs.v | unquoted }}'}", "with: {run: '${{ inputs.v | unquoted }}'}"):
        report = check_text("sop: t\ninputs:\n  v: {type: string}\nsteps:\n  - id: a\n    uses: shell\n"
                            f"    run: echo\n    {field}\n", file="t.yaml")
        assert [p.code for p in report.problems] == ["misplaced-unquoted"], field


def test_the_example_sops_still_validate(examples_dir) -> None:
    from sop import check_file

    for path in sorted(examples_dir.glob("*.yaml")):
        report = check_file(path)
        assert report.ok, [str(p) for p in report.problems]
