"""The expression language of ``when`` and ``${{ }}``: evaluation, rendering and its sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sop import ExpressionError, check_text, compile_expression, render
from sop.expressions import Reference, find_references, strip_braces

CTX = {
    "inputs": {"account_id": "acc-1", "threshold": 2, "regions": ["eu", "us"], "name": "Ada"},
    "steps": {
        "fetch": {"output": {"rows": [1, 2, 3], "total": 6}, "status": "succeeded", "attempts": 1},
        "check": {"output": {"mismatches": 0}, "status": "succeeded", "attempts": 2},
    },
    "execution": {"id": "exec-1", "sop": "orders", "version": "1", "mode": "system_design"},
}


def evaluate(source: str, context: dict = CTX):
    return compile_expression(source).evaluate(context)


# -- evaluation ------------------------------------------------------------------------------


@pytest.mark.parametrize("source, expected", [
    ("steps.check.output.mismatches > 0", False),
    ("steps.fetch.output.rows | length >= inputs.threshold", True),
    ("inputs.account_id in ['acc-1', 'acc-2']", True),
    ("'eu' in inputs.regions and not steps.check.output.mismatches", True),
    ("steps.fetch.status == 'succeeded' or steps.fetch.attempts > 3", True),
    ("steps['fetch'].output['total'] / 2", 3.0),
    ("steps.fetch.output.rows[1:] | sum", 5),
    ("inputs.regions | join(',') | upper", "EU,US"),
    ("'big' if steps.fetch.output.total > 5 else 'small'", "big"),
    ("execution.id ~ '/' ~ inputs.name", "exec-1/Ada"),
    ("inputs.missing_key is defined", False),
    ("inputs.threshold is number", True),
    ("{'a': inputs.threshold}", {"a": 2}),
])
def test_conditions_evaluate_against_inputs_steps_and_execution(source: str, expected: object) -> None:
    assert evaluate(source) == expected


def test_an_expression_can_be_evaluated_many_times_with_different_contexts() -> None:
    expr = compile_expression("steps.check.output.mismatches > 0")
    assert expr.evaluate(CTX) is False
    other = {**CTX, "steps": {"check": {"output": {"mismatches": 4}}}}
    assert expr.evaluate(other) is True


def test_references_name_what_an_expression_reads() -> None:
    expr = compile_expression("steps.check.output.mismatches > inputs.threshold and execution.mode")
    assert set(expr.references) == {
        Reference("steps", "check", "output"),
        Reference("inputs", "threshold"),
        Reference("execution", "mode"),
    }
    assert expr.step_refs == {"check"}


def test_references_through_subscripts_are_found() -> None:
    expr = compile_expression("steps['fetch'].output.rows[inputs.threshold]")
    assert expr.step_refs == {"fetch"}
    assert Reference("inputs", "threshold") in expr.references


def test_find_references_returns_each_embedded_expression() -> None:
    text = "echo ${{ inputs.name }} has ${{ steps.fetch.output.total }} rows"
    assert [r.strip() for r in find_references(text)] == ["inputs.name", "steps.fetch.output.total"]


def test_strip_braces_accepts_a_wrapped_or_a_bare_condition() -> None:
    assert strip_braces("${{ steps.check.output.mismatches > 0 }}").strip() == \
        "steps.check.output.mismatches > 0"
    assert strip_braces("inputs.threshold > 1") == "inputs.threshold > 1"


# -- render ----------------------------------------------------------------------------------


def test_a_whole_string_reference_keeps_the_value_type() -> None:
    assert render("${{ steps.fetch.output.rows }}", CTX) == [1, 2, 3]
    assert render("${{ inputs.threshold }}", CTX) == 2
    assert render("  ${{ steps.fetch.output }}  ", CTX) == {"rows": [1, 2, 3], "total": 6}
    assert render("${{ steps.check.output.mismatches > 0 }}", CTX) is False


def test_an_embedded_reference_is_interpolated_as_text() -> None:
    assert render("account ${{ inputs.account_id }} has ${{ steps.fetch.output.total }} rows", CTX) == \
        "account acc-1 has 6 rows"
    assert render("clean=${{ steps.check.output.mismatches == 0 }}", CTX) == "clean=true"
    assert render("rows: ${{ steps.fetch.output.rows }}", CTX) == "rows: [1, 2, 3]"


def test_a_string_made_of_two_references_is_interpolated() -> None:
    # The string starts with '${{' and ends with '}}' but holds two references.
    assert render("${{ inputs.name }} ${{ inputs.account_id }}", CTX) == "Ada acc-1"
    assert render("${{ inputs.threshold }}${{ inputs.threshold }}", CTX) == "22"


def test_render_walks_mappings_and_lists() -> None:
    value = {"account": "${{ inputs.account_id }}", "rows": ["${{ steps.fetch.output.total }}", 7],
             "note": "plain", "n": 3}
    assert render(value, CTX) == {"account": "acc-1", "rows": [6, 7], "note": "plain", "n": 3}


def test_strings_without_references_are_returned_as_they_are() -> None:
    assert render("echo {{ not ours }} $HOME", CTX) == "echo {{ not ours }} $HOME"


@settings(max_examples=200)
@given(st.one_of(st.integers(), st.text()))
def test_a_whole_string_reference_returns_the_input_unchanged(value: int | str) -> None:
    context = {"inputs": {"v": value}, "steps": {}, "execution": {}}
    out = render("${{ inputs.v }}", context)
    assert out == value
    assert type(out) is type(value)


@settings(max_examples=100)
@given(st.integers(), st.text(alphabet=st.characters(blacklist_characters="$"), max_size=20))
def test_an_embedded_integer_is_written_as_its_decimal_text(value: int, prefix: str) -> None:
    context = {"inputs": {"v": value}, "steps": {}, "execution": {}}
    assert render(prefix + "=${{ inputs.v }}", context) == f"{prefix}={value}"


# -- forbidden syntax ------------------------------------------------------------------------


@pytest.mark.parametrize("source, words", [
    ("range(10)", "calls a function"),
    ("inputs.account_id.upper()", "calls a function"),
    ("steps.fetch.output.rows | map('x')", "unknown filter 'map'"),
    ("2 ** 8", "'**'"),
    ("inputs.__class__", "private attribute '__class__'"),
    ("steps.fetch.output.__class__.__mro__", "private attribute"),
    ("inputs._secret", "private attribute '_secret'"),
    ("inputs.threshold | attr('__class__')", "unknown filter 'attr'"),
    ("inputs.threshold is divisibleby 3", "unknown test 'divisibleby'"),
    ("lipsum", "unknown name 'lipsum'"),
    ("cycler", "unknown name 'cycler'"),
    ("steps.fetch.output.rows; 1", "does not parse"),
    ("{% for x in steps %}", "does not parse"),
    ("steps.fetch.output >", "does not parse"),
    ("", "is empty"),
])
def test_forbidden_syntax_is_refused_when_compiled(source: str, words: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(source)
    assert words in str(info.value)
    assert info.value.expression == source


def test_a_call_suggests_a_filter() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression("len(steps.fetch.output.rows)")
    assert "| length" in (info.value.suggestion or "")


def test_an_unknown_name_suggests_the_close_one() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression("input.threshold > 1")
    assert "reads unknown name 'input'" in str(info.value)
    assert "inputs, steps, execution" in str(info.value)
    assert info.value.suggestion == "did you mean 'inputs'?"


def test_an_unknown_filter_lists_the_available_ones() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression("inputs.regions | shuffle")
    assert "available filters:" in (info.value.suggestion or "")
    assert "length" in (info.value.suggestion or "")


def test_private_names_are_refused_in_subscripts_as_in_attributes() -> None:
    # ``x['__class__']`` is how Jinja reaches an attribute when the key is missing.
    compiled = []
    for source in ("inputs['__class__']", "steps.fetch['__class__']", "inputs.account_id['_private']"):
        try:
            compile_expression(source)
        except ExpressionError:
            continue
        compiled.append(source)
    assert compiled == []


# -- injection: nothing SOP text says ever runs ----------------------------------------------


def test_code_in_a_when_condition_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "when-ran"
    text = (
        "sop: injection\nsteps:\n  - id: a\n    run: echo\n"
        f"    when: \"__import__('os').system('touch {marker}')\"\n"
    )
    report = check_text(text)
    assert not report.ok
    [problem] = report.problems
    assert problem.code == "bad-expression"
    assert problem.path == "steps[0].when"
    assert problem.line == 5
    with pytest.raises(ExpressionError):
        render(f"${{{{ __import__('os').system('touch {marker}') }}}}", CTX)
    assert not marker.exists()


def test_code_in_a_with_reference_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "with-ran"
    text = (
        "sop: injection\nsteps:\n  - id: a\n    uses: shell\n    run: echo\n"
        f"    with: {{cmd: \"${{{{ __import__('os').system('touch {marker}') }}}}\"}}\n"
    )
    report = check_text(text)
    assert not report.ok
    [problem] = report.problems
    assert problem.code == "bad-expression"
    assert problem.path == "steps[0].with.cmd"
    assert "calls a function" in problem.message or "unknown name" in problem.message
    assert not marker.exists()


def test_reaching_python_internals_through_attributes_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "mro-ran"
    text = (
        "sop: injection\nsteps:\n  - id: a\n    run: echo\n"
        "    when: \"inputs.__class__.__mro__[1].__subclasses__()\"\n"
        f"  - id: b\n    run: \"echo ${{{{ steps.a.output.__globals__ }}}} {marker}\"\n"
        "    depends_on: [a]\n"
    )
    report = check_text(text)
    assert [p.code for p in report.problems] == ["bad-expression", "bad-expression"]
    assert not marker.exists()


# -- evaluation limits and errors ------------------------------------------------------------


@pytest.mark.parametrize("source", [
    "'x' * 1000000000",
    "1000000000 * 'x'",
    "[1] * 1000000000",
    "'x' * inputs.n",
    "'ab' * 1000 * 1000",
])
def test_huge_repetition_is_refused_when_evaluated(source: str) -> None:
    expr = compile_expression(source)  # it compiles: the size depends on the values
    with pytest.raises(ExpressionError) as info:
        expr.evaluate({"inputs": {"n": 10**9}, "steps": {}, "execution": {}})
    assert "refused" in str(info.value)
    assert "100,000" in str(info.value)


def test_small_repetition_is_allowed() -> None:
    assert evaluate("'ab' * 3") == "ababab"
    assert evaluate("[0] * 4") == [0, 0, 0, 0]


def test_a_filter_cannot_multiply_text_past_the_repetition_limit() -> None:
    # Each operand respects the 100,000-item limit; the replace multiplies them
    # (1,000 x 1,000 here; 100,000 x 100,000 would be 10 GB).
    with pytest.raises(ExpressionError):
        evaluate("('a' * 1000) | replace('a', 'b' * 1000)")


def test_a_missing_step_is_an_expression_error_naming_it() -> None:
    with pytest.raises(ExpressionError) as info:
        evaluate("steps.ship.output.count > 1")
    assert "steps.ship.output.count > 1" in str(info.value)
    assert "'ship'" in str(info.value)


def test_a_missing_field_in_a_comparison_is_an_expression_error() -> None:
    with pytest.raises(ExpressionError) as info:
        evaluate("inputs.nope > 1")
    assert "'nope'" in str(info.value)


def test_a_missing_input_referenced_alone_is_an_expression_error() -> None:
    with pytest.raises(ExpressionError) as info:
        render("${{ inputs.nope }}", CTX)
    assert "'nope'" in str(info.value)


def test_a_missing_input_inside_text_is_an_expression_error() -> None:
    with pytest.raises(ExpressionError) as info:
        render("hello ${{ inputs.nope }}", CTX)
    assert "'nope'" in str(info.value)


def test_a_type_error_at_run_time_is_an_expression_error() -> None:
    with pytest.raises(ExpressionError) as info:
        evaluate("inputs.account_id > 3")
    assert "failed" in str(info.value)


def test_division_by_zero_is_an_expression_error() -> None:
    with pytest.raises(ExpressionError) as info:
        evaluate("steps.fetch.output.total / 0")
    assert "division by zero" in str(info.value)
