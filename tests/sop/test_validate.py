"""Validation: every mistake a user can make, reported with the message, path and line they read."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runtime.registry import Registry
from sop import (
    Graph,
    Mode,
    Problem,
    Sop,
    SopValidationError,
    check_file,
    check_new_steps,
    check_text,
    choose_mode,
    load,
    loads,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def problems_of(text: str, **kwargs) -> list[Problem]:
    report = check_text(textwrap.dedent(text), file="orders.yaml", **kwargs)
    assert not report.ok
    assert report.sop is None and report.graph is None
    return report.problems


def only(text: str, **kwargs) -> Problem:
    problems = problems_of(text, **kwargs)
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


# -- the examples ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid(path: Path) -> None:
    report = check_file(path)
    assert report.ok, "\n".join(map(str, report.problems))
    assert report.problems == []
    assert report.sop is not None and report.graph is not None
    assert set(report.graph.nodes) == {s.id for s in report.sop.steps}
    assert report.mode is Mode.SYSTEM_DESIGN


def test_there_are_four_examples() -> None:
    assert [p.name for p in EXAMPLES] == [
        "fanout-condition.yaml", "file-intake.yaml", "hello-linear.yaml", "invoice-reconciliation.yaml"]


def test_load_returns_the_model_of_a_valid_file() -> None:
    sop = load(ROOT / "examples" / "invoice-reconciliation.yaml")
    assert sop.sop == "invoice-reconciliation"
    assert [s.id for s in sop.steps] == ["fetch", "statement", "check", "escalate"]
    assert sop.step("escalate").depends_on == ("check",)
    assert sop.effective_retry(sop.step("escalate")).max_attempts == 5
    assert sop.effective_retry(sop.step("fetch")).max_attempts == 3


def test_loads_raises_with_every_problem() -> None:
    with pytest.raises(SopValidationError) as info:
        loads("sop: x\nsteps:\n  - {id: a, run: echo, depends_on: [b]}\n  - {id: a, run: echo}\n")
    assert len(info.value.errors) == 2
    assert str(info.value).startswith("2 problems in SOP:")
    assert "depends on 'b'" in str(info.value)


# -- the schema layer ------------------------------------------------------------------------


def test_a_misspelt_field_is_named_with_a_suggestion() -> None:
    p = only("""\
        sop: orders
        steps:
          - id: fetch
            run: echo
          - id: ship
            run: echo
            dependson: [fetch]
        """)
    assert p.code == "unknown-field"
    assert p.message == "unknown field 'dependson'"
    assert p.suggestion == "did you mean 'depends_on'?"
    assert p.path == "steps[1].dependson"
    assert (p.line, p.column) == (7, 5)
    assert str(p) == ("orders.yaml:7:5: steps[1].dependson: unknown field 'dependson'; "
                      "did you mean 'depends_on'?")


def test_an_unknown_field_with_no_close_name_lists_the_allowed_ones() -> None:
    p = only("""\
        sop: orders
        defaults:
          zzz: 1
        steps:
          - {id: a, run: echo}
        """)
    assert p.code == "unknown-field"
    assert p.path == "defaults.zzz"
    assert p.suggestion == "allowed fields: retry, timeout_s, resources"


def test_a_mistake_in_the_only_step_is_not_reported_as_an_empty_steps_list() -> None:
    problems = problems_of("""\
        sop: orders
        steps:
          - id: fetch
            run: echo
            dependson: [x]
        """)
    assert [p.code for p in problems] == ["unknown-field"], "\n".join(map(str, problems))


@pytest.mark.parametrize("line, path, message", [
    ("retry: {max_attempts: many}", "steps[1].retry.max_attempts",
     "expected a valid integer, unable to parse string as an integer, got a string ('many')"),
    ("timeout_s: [1]", "steps[1].timeout_s", "expected a valid number, got a list"),
    ("depends_on: {a: 1}", "steps[1].depends_on", "expected a valid tuple, got a mapping"),
    ("idempotent: sometimes", "steps[1].idempotent",
     "expected a valid boolean, unable to interpret input, got a string ('sometimes')"),
])
def test_a_wrong_type_says_what_was_expected_and_what_was_written(line: str, path: str,
                                                                   message: str) -> None:
    p = only(f"""\
        sop: orders
        steps:
          - id: a
            run: echo
          - id: b
            run: echo
            {line}
        """)
    assert p.code == "wrong-type"
    assert p.path == path
    assert p.message == message
    assert p.line == 7


def test_a_bad_choice_lists_the_choices_and_the_close_one() -> None:
    p = only("""\
        sop: orders
        steps:
          - {id: a, run: echo}
          - {id: b, run: echo, depends_on: [a], trigger_rule: all_sucess}
        """)
    assert p.code == "bad-value"
    assert p.path == "steps[1].trigger_rule"
    assert p.message == ("expected one of all_success, all_done, one_success, none_failed; "
                         "got a string ('all_sucess')")
    assert (p.suggestion or "").startswith("did you mean 'all_success'")
    assert p.line == 4


def test_a_bad_sop_name_states_the_rule() -> None:
    p = only("sop: Orders Daily\nsteps:\n  - {id: a, run: echo}\n")
    assert p.path == "sop"
    assert p.message == ("expected a name of lower-case letters, digits, '-', '_' and '.', "
                         "got 'Orders Daily'")
    assert (p.line, p.column) == (1, 6)


def test_a_missing_required_field_is_named() -> None:
    p = only("sop: orders\n")
    assert p.code == "missing-field"
    assert p.message == "required field 'steps' is missing"


def test_a_step_needs_a_handler_or_a_command() -> None:
    p = only("sop: orders\nsteps:\n  - {id: a, run: echo}\n  - {id: b, depends_on: [a]}\n")
    assert p.path == "steps[1]"
    assert p.message == "a step needs 'uses' (its handler) or 'run' (a shell command)"
    assert p.line == 4


def test_version_written_as_a_bare_float_asks_for_quotes() -> None:
    p = only("sop: orders\nversion: 1.10\nsteps:\n  - {id: a, run: echo}\n")
    assert p.path == "version"
    assert p.message == ('version must be text; write it quoted (version: "1.1") so YAML does not '
                         "read it as a number")
    assert (p.line, p.column) == (2, 10)


def test_version_written_as_an_integer_is_fine() -> None:
    assert loads("sop: orders\nversion: 2\nsteps:\n  - {id: a, run: echo}\n").version == "2"


# -- whole-file problems ---------------------------------------------------------------------


def test_an_empty_file_says_what_an_sop_needs() -> None:
    report = check_text("", file="orders.yaml")
    [p] = report.problems
    assert p.code == "empty"
    assert p.message == "the file is empty; an SOP needs at least 'sop' and 'steps'"
    assert str(p).startswith("orders.yaml: ")


def test_a_comment_only_file_is_empty() -> None:
    assert [p.code for p in check_text("# nothing yet\n").problems] == ["empty"]


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just text\n", "str"), ("42\n", "int")])
def test_a_file_that_is_not_a_mapping_is_refused(text: str, kind: str) -> None:
    [p] = check_text(text, file="orders.yaml").problems
    assert p.code == "wrong-type"
    assert p.message == f"an SOP is a mapping with 'sop', 'steps' and other fields, not a {kind}"
    assert (p.line, p.column) == (1, 1)


def test_a_missing_file_is_reported_not_raised(tmp_path: Path) -> None:
    report = check_file(tmp_path / "nope.yaml")
    [p] = report.problems
    assert p.code == "unreadable"
    assert p.message == "cannot read SOP file: No such file or directory"
    assert p.file == str(tmp_path / "nope.yaml")


def test_a_directory_is_reported_as_unreadable(tmp_path: Path) -> None:
    [p] = check_file(tmp_path).problems
    assert p.code == "unreadable"
    assert "cannot read SOP file" in p.message


def test_load_of_an_unreadable_file_raises_a_validation_error(tmp_path: Path) -> None:
    with pytest.raises(SopValidationError) as info:
        load(tmp_path / "nope.yaml")
    assert "cannot read SOP file" in str(info.value)


# -- ids and dependencies --------------------------------------------------------------------


def test_duplicate_step_ids_name_the_first_use() -> None:
    p = only("""\
        sop: orders
        steps:
          - {id: fetch, run: echo}
          - {id: pack, run: echo}
          - {id: fetch, run: echo}
        """)
    assert p.code == "duplicate-step"
    assert p.message == "step id 'fetch' is already used by steps[0]"
    assert p.suggestion == "give every step a unique id"
    assert p.path == "steps[2].id"
    assert p.line == 5


def test_a_rollback_step_may_not_reuse_a_step_id() -> None:
    p = only("""\
        sop: orders
        steps:
          - {id: fetch, run: echo}
        rollback:
          - {id: fetch, run: echo}
        """)
    assert p.message == "step id 'fetch' is already used by steps[0]"
    assert p.path == "rollback[0].id"


def test_an_unknown_dependency_is_named_with_the_file_and_a_suggestion() -> None:
    p = only("""\
        sop: orders
        steps:
          - {id: fetch, run: echo}
          - {id: packs, run: echo}
          - id: ship
            run: echo
            depends_on: [fetch, pack]
        """)
    assert p.code == "unknown-dependency"
    assert p.message == "step 'ship' depends on 'pack', which is not defined in orders.yaml"
    assert p.suggestion == "did you mean 'packs'?"
    assert p.path == "steps[2].depends_on[1]"
    assert (p.line, p.column) == (7, 25)


def test_a_single_dependency_may_be_written_without_brackets() -> None:
    sop = loads("sop: orders\nsteps:\n  - {id: a, run: echo}\n  - {id: b, run: echo, depends_on: a}\n")
    assert sop.step("b").depends_on == ("a",)


def test_a_cycle_is_reported_with_its_full_path() -> None:
    p = only("""\
        sop: orders
        steps:
          - id: a
            run: echo
            depends_on: [b]
          - id: b
            run: echo
            depends_on: [c]
          - id: c
            run: echo
            depends_on: [a]
        """)
    assert p.code == "cycle"
    assert p.message == "dependency cycle: a -> b -> c -> a"
    assert p.path == "steps[0].depends_on[0]"
    assert p.line == 5
    assert "remove one of these dependencies" in (p.suggestion or "")


def test_a_step_depending_on_itself_is_a_cycle() -> None:
    p = only("sop: orders\nsteps:\n  - {id: a, run: echo, depends_on: [a]}\n")
    assert p.code == "cycle"
    assert p.message == "dependency cycle: a -> a"


def test_two_separate_cycles_are_both_reported() -> None:
    problems = problems_of("""\
        sop: orders
        steps:
          - {id: a, run: echo, depends_on: [b]}
          - {id: b, run: echo, depends_on: [a]}
          - {id: c, run: echo, depends_on: [d]}
          - {id: d, run: echo, depends_on: [c]}
        """)
    assert sorted(p.message for p in problems) == [
        "dependency cycle: a -> b -> a", "dependency cycle: c -> d -> c"]


# -- expressions -----------------------------------------------------------------------------


def test_reading_a_step_that_does_not_run_before_suggests_depends_on() -> None:
    p = only("""\
        sop: orders
        steps:
          - id: fetch
            run: echo
          - id: ship
            run: "echo ${{ steps.fetch.output }}"
        """)
    assert p.code == "not-upstream"
    assert p.message == "step 'ship' reads steps.fetch, which does not run before it"
    assert p.suggestion == "add 'fetch' to depends_on of 'ship'"
    assert p.path == "steps[1].run"
    assert (p.line, p.column) == (6, 10)


def test_reading_a_step_upstream_through_others_is_fine() -> None:
    report = check_text("""\
sop: orders
steps:
  - {id: a, run: echo}
  - {id: b, run: echo, depends_on: [a]}
  - {id: c, run: "echo ${{ steps.a.output }}", depends_on: [b], when: "steps.a.status == 'ok'"}
""")
    assert report.ok, report.problems


def test_reading_an_undefined_step_suggests_the_close_one() -> None:
    p = only("""\
        sop: orders
        steps:
          - id: fetch
            run: echo
          - id: ship
            depends_on: [fetch]
            run: echo
            when: "steps.fetc.output.ok"
        """)
    assert p.code == "unknown-step"
    assert p.message == "expression 'steps.fetc.output.ok' reads step 'fetc', which is not defined"
    assert p.suggestion == "did you mean 'fetch'?"
    assert p.path == "steps[1].when"
    assert p.line == 8


def test_reading_an_unknown_step_field_lists_the_fields() -> None:
    p = only("""\
        sop: orders
        steps:
          - {id: fetch, run: echo}
          - {id: ship, depends_on: [fetch], run: "echo ${{ steps.fetch.outputs }}"}
        """)
    assert p.code == "unknown-name"
    assert p.message == "steps.fetch has no field 'outputs'; it has output, status, attempts, error"
    assert p.suggestion == "did you mean 'output'?"


def test_a_step_reading_its_own_result_is_refused() -> None:
    p = only("sop: orders\nsteps:\n  - {id: a, run: echo, when: \"steps.a.output\"}\n")
    assert p.code == "self-reference"
    assert p.message == "step 'a' reads its own result in 'steps.a.output'"


def test_an_expression_that_does_not_parse_is_located() -> None:
    p = only("""\
        sop: orders
        steps:
          - id: a
            run: echo
            when: "steps.a.output >"
        """)
    assert p.code == "bad-expression"
    assert p.message == "expression 'steps.a.output >' does not parse: unexpected 'end of template'"
    assert p.path == "steps[0].when"
    assert (p.line, p.column) == (5, 11)


def test_an_unclosed_reference_is_reported() -> None:
    p = only('sop: orders\nsteps:\n  - {id: a, run: "echo ${{ inputs.x"}\n')
    assert p.code == "bad-expression"
    assert p.message == "'${{' is not closed by '}}'"
    assert p.path == "steps[0].run"


def test_reading_an_undeclared_input_says_how_to_declare_it() -> None:
    p = only("""\
        sop: orders
        steps:
          - id: a
            uses: shell
            run: echo
            with: {account: "${{ inputs.account_id }}"}
        """)
    assert p.code == "unknown-input"
    assert p.message == ("expression 'inputs.account_id' reads input 'account_id', which the SOP "
                         "does not declare under 'inputs'")
    assert p.suggestion == "declare it: inputs: {account_id: {type: string}}"
    assert p.path == "steps[0].with.account"
    assert p.line == 6


def test_a_misspelt_input_suggests_the_declared_one() -> None:
    p = only("""\
        sop: orders
        inputs: {account_id: {type: string}}
        steps:
          - {id: a, run: "echo ${{ inputs.acount_id }}"}
        """)
    assert p.code == "unknown-input"
    assert p.suggestion == "did you mean 'account_id'?"


def test_an_unknown_execution_field_suggests_the_close_one() -> None:
    p = only('sop: orders\nsteps:\n  - {id: a, run: "echo ${{ execution.idd }}"}\n')
    assert p.code == "unknown-name"
    assert p.message == "execution has no field 'idd'"
    assert p.suggestion == "did you mean 'id'?"


def test_outputs_are_checked_too() -> None:
    p = only("""\
        sop: orders
        steps:
          - {id: fetch, run: echo}
        outputs:
          rows: "${{ steps.fetsh.output }}"
        """)
    assert p.code == "unknown-step"
    assert p.path == "outputs.rows"
    assert p.line == 5


# -- handlers, data sources, tools, sub-SOPs -------------------------------------------------


@pytest.fixture
def registry() -> Registry:
    reg = Registry(discover=False)

    @reg.handler()
    def send_email(to: str) -> None:
        """Send an email."""

    return reg


def test_a_registered_handler_is_accepted(registry: Registry) -> None:
    report = check_text("sop: orders\nsteps:\n  - {id: a, uses: send-email}\n", handlers=registry)
    assert report.ok, report.problems


def test_an_unknown_handler_suggests_the_registered_one(registry: Registry) -> None:
    p = only("sop: orders\nsteps:\n  - id: a\n    uses: send-emial\n", handlers=registry)
    assert p.code == "unknown-handler"
    assert p.message == "no step handler is registered as 'send-emial'"
    assert p.suggestion == "did you mean 'send-email'?"
    assert p.path == "steps[0].uses"
    assert (p.line, p.column) == (4, 11)


def test_an_unknown_handler_with_no_close_name_says_how_to_register(registry: Registry) -> None:
    p = only("sop: orders\nsteps:\n  - {id: a, uses: frobnicate}\n", handlers=registry)
    assert "register it with @registry.handler" in (p.suggestion or "")


def test_handlers_are_not_checked_without_a_catalog() -> None:
    assert check_text("sop: orders\nsteps:\n  - {id: a, uses: frobnicate}\n").ok


def test_an_unknown_handler_kind_is_refused() -> None:
    p = only("sop: orders\nsteps:\n  - {id: a, uses: 'http:example.com'}\n")
    assert p.code == "bad-handler"
    assert p.message == "unknown handler kind 'http' in 'http:example.com'"
    assert p.suggestion == "use mcp:, python:, sop:, shell or a registered name"


def test_a_python_handler_whose_module_does_not_exist() -> None:
    p = only("sop: orders\nsteps:\n  - id: a\n    uses: python:no_such_module_for_sopflow:run\n")
    assert p.code == "unknown-handler"
    assert p.message == "python module 'no_such_module_for_sopflow' cannot be found"
    assert "PYTHONPATH" in (p.suggestion or "")
    assert p.path == "steps[0].uses"
    assert p.line == 4


def test_a_malformed_python_handler_shows_the_expected_shape() -> None:
    p = only("sop: orders\nsteps:\n  - {id: a, uses: 'python:examples.handlers'}\n")
    assert p.code == "bad-handler"
    assert p.message == "expected python:<module>:<function>, got 'python:examples.handlers'"


def test_a_python_handler_whose_package_fails_to_import_is_a_problem_not_a_crash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "sopflow_test_broken_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('broken at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    report = check_text("sop: orders\nsteps:\n  - {id: a, uses: 'python:sopflow_test_broken_pkg.mod:run'}\n")
    assert not report.ok
    assert [p.path for p in report.problems] == ["steps[0].uses"]


SOURCES = """\
sop: orders
data_sources:
  ledger: {command: python, tools: [list_transactions, bank_statement]}
steps:
  - id: a
    uses: {uses}
"""


def test_an_unknown_data_source_suggests_the_close_one() -> None:
    p = only(SOURCES.replace("{uses}", "mcp:ledgr/list_transactions"))
    assert p.code == "unknown-source"
    assert p.message == "data source 'ledgr' is not defined under 'data_sources'"
    assert p.suggestion == "did you mean 'ledger'?"
    assert p.path == "steps[0].uses"
    assert p.line == 6


def test_an_undeclared_tool_suggests_the_close_one() -> None:
    p = only(SOURCES.replace("{uses}", "mcp:ledger/list_transaction"))
    assert p.code == "unknown-tool"
    assert p.message == "data source 'ledger' declares no tool 'list_transaction'"
    assert p.suggestion == "did you mean 'list_transactions'?"


def test_an_undeclared_tool_with_no_close_name_lists_the_tools() -> None:
    p = only(SOURCES.replace("{uses}", "mcp:ledger/delete_everything"))
    assert p.suggestion == "it offers list_transactions, bank_statement"


def test_tools_are_not_checked_when_a_source_declares_none() -> None:
    report = check_text("sop: orders\ndata_sources:\n  ledger: {url: 'https://mcp.example.com'}\n"
                        "steps:\n  - {id: a, uses: 'mcp:ledger/anything'}\n")
    assert report.ok, report.problems


def test_agent_tools_are_checked_against_data_sources() -> None:
    problems = problems_of("""\
        sop: orders
        data_sources:
          ledger: {command: python, tools: [list_transactions]}
        agent:
          tools: [ledgr.list_transactions, ledger.list_transaction, list_transactions]
        steps:
          - {id: a, run: echo}
        """)
    assert [(p.path, p.code) for p in problems] == [
        ("agent.tools[0]", "unknown-source"), ("agent.tools[1]", "unknown-tool"),
        ("agent.tools[2]", "bad-handler")]
    assert problems[2].message == "expected <data source>.<tool>, got 'list_transactions'"


def test_a_data_source_needs_exactly_one_transport() -> None:
    p = only("sop: orders\ndata_sources:\n  ledger: {command: python, url: 'https://x'}\n"
             "steps:\n  - {id: a, run: echo}\n")
    assert p.path == "data_sources.ledger"
    assert p.message == "a data source needs exactly one of 'command' (stdio) or 'url' (HTTP)"


def test_a_missing_sub_sop_file_is_named(tmp_path: Path) -> None:
    main = tmp_path / "main.yaml"
    main.write_text("sop: main\nsteps:\n  - id: a\n    uses: sop:parts/missing.yaml\n")
    [p] = check_file(main).problems
    assert p.code == "unknown-handler"
    assert p.message == (f"sub-SOP file 'parts/missing.yaml' does not exist "
                         f"(looked at {(tmp_path / 'parts' / 'missing.yaml').resolve()})")
    assert (p.path, p.line) == ("steps[0].uses", 4)


def test_a_valid_sub_sop_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "sub.yaml").write_text("sop: sub\nsteps:\n  - {id: x, run: echo}\n")
    main = tmp_path / "main.yaml"
    main.write_text("sop: main\nsteps:\n  - {id: a, uses: 'sop:sub.yaml'}\n")
    assert check_file(main).ok


def test_an_invalid_sub_sop_reports_its_own_problems_with_its_own_file(tmp_path: Path) -> None:
    sub = tmp_path / "sub.yaml"
    sub.write_text("sop: sub\nsteps:\n  - {id: x, run: echo, depends_on: [y]}\n")
    main = tmp_path / "main.yaml"
    main.write_text("sop: main\nsteps:\n  - {id: a, uses: 'sop:sub.yaml'}\n")
    problems = check_file(main).problems
    assert sorted(p.code for p in problems) == ["invalid-sub-sop", "unknown-dependency"]
    inner = next(p for p in problems if p.code == "unknown-dependency")
    assert inner.file == str(sub) and inner.line == 3


def test_a_sub_sop_including_itself_is_a_cycle(tmp_path: Path) -> None:
    main = tmp_path / "main.yaml"
    main.write_text("sop: main\nsteps:\n  - {id: a, uses: 'sop:main.yaml'}\n")
    [p] = check_file(main).problems
    assert p.code == "cycle"
    assert p.message == "sub-SOP 'main.yaml' includes itself (directly or through others)"


# -- mode ------------------------------------------------------------------------------------


def test_auto_picks_agent_centric_when_no_step_has_dependencies() -> None:
    report = check_text("sop: orders\nsteps:\n  - {id: a, run: echo}\n  - {id: b, run: echo}\n")
    assert report.mode is Mode.AGENT_CENTRIC
    assert report.mode_reason == "auto: no step declares dependencies, so an agent follows the SOP"


def test_auto_picks_system_design_when_steps_have_dependencies() -> None:
    report = check_text("sop: orders\nsteps:\n  - {id: a, run: echo}\n  - {id: b, run: echo, depends_on: a}\n")
    assert report.mode is Mode.SYSTEM_DESIGN
    assert report.mode_reason == "auto: steps declare dependencies, so they run as a DAG"


def test_agent_centric_is_refused_for_a_fan_in_with_the_reason() -> None:
    p = only("""\
        sop: orders
        mode: agent_centric
        steps:
          - {id: fetch, run: echo}
          - {id: statement, run: echo}
          - {id: check, run: echo, depends_on: [fetch, statement]}
        """)
    assert p.code == "bad-mode"
    assert p.message == (
        "mode agent_centric does not fit this SOP: agent_centric needs a checklist an agent can "
        "follow in order, but step 'check' joins 2 branches; use mode: system_design (or auto) "
        "for branching dependencies")
    assert (p.path, p.line, p.column) == ("mode", 2, 7)


def test_agent_centric_is_refused_for_a_fan_out() -> None:
    p = only("""\
        sop: orders
        mode: agent_centric
        steps:
          - {id: fetch, run: echo}
          - {id: a, run: echo, depends_on: [fetch]}
          - {id: b, run: echo, depends_on: [fetch]}
        """)
    assert "step 'fetch' fans out to 2 steps" in p.message


def test_agent_centric_is_refused_for_a_trigger_rule() -> None:
    p = only("""\
        sop: orders
        mode: agent_centric
        steps:
          - {id: a, run: echo}
          - {id: b, run: echo, depends_on: [a], trigger_rule: all_done}
        """)
    assert "step 'b' has trigger_rule all_done" in p.message


def test_agent_centric_is_accepted_for_a_sequence() -> None:
    report = check_text("sop: orders\nmode: agent_centric\nsteps:\n  - {id: a, run: echo}\n"
                        "  - {id: b, run: echo, depends_on: [a]}\n")
    assert report.ok and report.mode is Mode.AGENT_CENTRIC


def test_a_declared_system_design_is_kept() -> None:
    assert choose_mode("system_design", {"a": []}, {}) == (Mode.SYSTEM_DESIGN, "declared system_design")


# -- everything in one pass ------------------------------------------------------------------


def test_every_problem_is_reported_in_one_pass() -> None:
    problems = problems_of("""\
        sop: Orders
        version: 1.5
        steps:
          - id: fetch
            run: echo
            retry: {max_attempts: 0}
          - id: fetch
            run: echo
          - id: ship
            run: "echo ${{ inputs.account }}"
            depends_on: [pack]
            trigger_rule: sometimes
        """)
    codes = [p.code for p in problems]
    assert len(problems) >= 5
    for code in ("duplicate-step", "unknown-input", "unknown-dependency"):
        assert code in codes, codes
    paths = {p.path for p in problems}
    assert {"sop", "version", "steps[0].retry.max_attempts", "steps[2].trigger_rule"} <= paths
    lines = [p.line for p in problems]
    assert lines == sorted(lines), "problems are listed in file order"
    assert all(p.file == "orders.yaml" and p.line is not None for p in problems)


# -- adding steps to a running SOP -----------------------------------------------------------


BASE = """\
sop: orders
inputs: {account: {type: string}}
steps:
  - {id: fetch, run: echo}
  - {id: check, run: echo, depends_on: [fetch]}
"""


@pytest.fixture
def running() -> tuple[Sop, Graph]:
    report = check_text(BASE)
    assert report.ok and report.graph is not None
    return report.raise_for_problems(), report.graph


def test_new_steps_extend_the_graph(running: tuple[Sop, Graph]) -> None:
    sop, graph = running
    steps = check_new_steps(sop, graph, [
        {"id": "notify", "run": "echo ${{ steps.report.output }} ${{ steps.fetch.output }}",
         "depends_on": ["report"]},
        {"id": "report", "uses": "shell", "run": "echo ${{ inputs.account }}", "depends_on": ["check"]},
    ])
    assert [s.id for s in steps] == ["notify", "report"]
    assert graph.nodes == ["fetch", "check", "notify", "report"]
    assert graph.dependencies("report") == ["check"]
    assert graph.topological_order() == ["fetch", "check", "report", "notify"]


def assert_untouched(graph: Graph) -> None:
    assert graph.nodes == ["fetch", "check"]
    assert graph.edge_count == 1


def test_a_cycle_among_new_steps_is_refused_and_the_graph_untouched(running: tuple[Sop, Graph]) -> None:
    sop, graph = running
    with pytest.raises(SopValidationError) as info:
        check_new_steps(sop, graph, [
            {"id": "a", "run": "echo", "depends_on": ["check", "c"]},
            {"id": "b", "run": "echo", "depends_on": ["a"]},
            {"id": "c", "run": "echo", "depends_on": ["b"]},
        ])
    [p] = info.value.problems
    assert p.code == "cycle"
    assert "dependency cycle: " in p.message
    assert all(f"{x} -> " in p.message for x in ("a", "b", "c"))
    assert_untouched(graph)


def test_a_new_step_depending_on_itself_is_refused(running: tuple[Sop, Graph]) -> None:
    sop, graph = running
    with pytest.raises(SopValidationError) as info:
        check_new_steps(sop, graph, [{"id": "loop", "run": "echo", "depends_on": ["loop"]}])
    assert "loop -> loop" in str(info.value)
    assert_untouched(graph)


def test_a_new_step_reading_a_step_that_is_not_upstream_is_refused(running: tuple[Sop, Graph]) -> None:
    sop, graph = running
    with pytest.raises(SopValidationError) as info:
        check_new_steps(sop, graph, [{"id": "ship", "run": "echo ${{ steps.check.output }}",
                                      "depends_on": ["fetch"]}])
    [p] = info.value.problems
    assert p.code == "not-upstream"
    assert p.path == "steps[0].run"
    assert p.suggestion == "add 'check' to depends_on of 'ship'"
    assert_untouched(graph)


def test_a_new_step_reading_an_unknown_step_or_input_is_refused(running: tuple[Sop, Graph]) -> None:
    sop, graph = running
    with pytest.raises(SopValidationError) as info:
        check_new_steps(sop, graph, [{"id": "ship", "run": "echo ${{ steps.chek.output }} ${{ inputs.acount }}",
                                      "depends_on": ["check"]}])
    assert sorted(p.code for p in info.value.problems) == ["unknown-input", "unknown-step"]
    assert_untouched(graph)


def test_a_new_step_with_an_unknown_dependency_is_refused(running: tuple[Sop, Graph]) -> None:
    sop, graph = running
    with pytest.raises(SopValidationError) as info:
        check_new_steps(sop, graph, [{"id": "ship", "run": "echo", "depends_on": ["chek"]}])
    [p] = info.value.problems
    assert p.code == "unknown-dependency"
    assert p.path == "steps[0].depends_on[0]"
    assert p.suggestion == "did you mean 'check'?"
    assert_untouched(graph)


def test_a_new_step_with_a_misspelt_field_is_refused(running: tuple[Sop, Graph]) -> None:
    sop, graph = running
    with pytest.raises(SopValidationError) as info:
        check_new_steps(sop, graph, [{"id": "ship", "run": "echo", "dependson": ["check"]}])
    [p] = info.value.problems
    assert p.code == "unknown-field" and p.suggestion == "did you mean 'depends_on'?"
    assert_untouched(graph)


def test_a_new_step_reusing_an_existing_id_names_the_existing_step(running: tuple[Sop, Graph]) -> None:
    sop, graph = running
    with pytest.raises(SopValidationError) as info:
        check_new_steps(sop, graph, [{"id": "fetch", "run": "echo"}])
    [p] = info.value.problems
    assert p.code == "duplicate-step"
    assert p.path == "steps[0].id"
    assert "'fetch'" in p.message
    assert "steps[-1]" not in p.message, p.message
    assert_untouched(graph)
