"""SOP ``triggers:``: the model and validation, with errors that name the trigger and where it is."""

from __future__ import annotations

import textwrap

import pytest

from sop import check_text
from sop.expressions import TRIGGER_ROOTS, ExpressionError, compile_expression
from sop.model import CatchUp

HEAD = """
sop: intake
inputs:
  path: {type: string, required: true}
  note: {type: string, default: ""}
steps:
  - id: a
    run: 'printf "%s" "$P"'
    env: {P: "${{ inputs.path }}"}
triggers:
"""


def check(triggers: str):
    return check_text(textwrap.dedent(HEAD) + textwrap.indent(textwrap.dedent(triggers), "  "), file="intake.yaml")


def errors(triggers: str) -> list[str]:
    report = check(triggers)
    return [f"{p.path}: {p.message}" for p in report.problems if p.severity == "error"]


def test_a_valid_cron_and_event_trigger_load_with_their_settings() -> None:
    report = check("""
        - name: nightly
          cron: "0 2 * * *"
          timezone: Europe/Paris
          catch_up: all
          max_concurrent: 2
          inputs: {path: /srv/in, note: "${{ trigger.fire_time }}"}
        - name: upload
          event: file.uploaded
          filter: "trigger.payload.size > 10"
          inputs: {path: "${{ trigger.payload.path }}"}
        """)
    assert report.ok, report.problems
    nightly, upload = report.sop.triggers
    assert (nightly.cron, nightly.timezone, nightly.catch_up, nightly.max_concurrent) == (
        "0 2 * * *", "Europe/Paris", CatchUp.ALL, 2)
    assert (upload.event, upload.filter, upload.catch_up) == ("file.uploaded", "trigger.payload.size > 10",
                                                              CatchUp.SKIP)


@pytest.mark.parametrize("cron, says", [
    ("0 2 * *", "has 4 fields; it needs five"),
    ("61 2 * * *", "does not parse"),
    ("0 2 * * * *", "has 6 fields"),
    ("0 2 31 2 *", "does not parse"),
    ("a b c d e", "does not parse"),
])
def test_a_bad_cron_is_refused_at_validation_naming_the_trigger(cron: str, says: str) -> None:
    found = errors(f"""
        - name: nightly
          cron: "{cron}"
          inputs: {{path: /x}}
        """)
    assert len(found) == 1, found
    assert found[0].startswith("triggers[0].cron: trigger 'nightly': cron")
    assert says in found[0]


def test_an_unknown_time_zone_is_refused_naming_the_trigger() -> None:
    found = errors("""
        - name: nightly
          cron: "0 2 * * *"
          timezone: Mars/Olympus
          inputs: {path: /x}
        """)
    assert found == ["triggers[0].timezone: trigger 'nightly': timezone 'Mars/Olympus' is not an IANA time zone "
                     "name (e.g. 'UTC', 'Europe/Paris')"]


@pytest.mark.parametrize("expression, says", [
    ("trigger.payload.__class__", "private attribute '__class__'"),
    ("trigger.payload['__globals__']", "private key '__globals__'"),
    ("__import__('os').system('id')", "calls a function"),
    ("trigger.payload.path.startswith('/')", "calls a function"),
    ("trigger.payload | attr('x')", "unknown filter 'attr'"),
    ("inputs.path == 'x'", "unknown name 'inputs'"),
    ("steps.a.output", "unknown name 'steps'"),
    ("cycler.__init__", "private attribute '__init__'"),
    ("lipsum", "unknown name 'lipsum'"),
])
def test_a_filter_reaching_outside_the_payload_is_refused(expression: str, says: str) -> None:
    found = errors(f"""
        - name: upload
          event: file.uploaded
          filter: "{expression}"
          inputs: {{path: x}}
        """)
    assert len(found) == 1 and found[0].startswith("triggers[0].filter: trigger 'upload': "), found
    assert says in found[0]


def test_trigger_inputs_must_be_declared_reference_known_fields_and_cover_required_inputs() -> None:
    found = errors("""
        - name: upload
          event: file.uploaded
          inputs: {pth: "${{ trigger.payload.path }}", note: "${{ trigger.paylod }}"}
        """)
    assert any("triggers[0].inputs.pth: trigger 'upload' sets input 'pth', which the SOP does not declare" in f
               for f in found), found
    assert any("triggers[0].inputs.note: trigger 'upload': trigger has no field 'paylod'" in f for f in found), found
    assert any("trigger 'upload' starts executions without the required input 'path'" in f for f in found), found


def test_a_trigger_needs_exactly_one_of_cron_and_event_and_a_unique_name() -> None:
    found = errors("""
        - name: both
          cron: "* * * * *"
          event: x
          inputs: {path: x}
        - name: neither
          inputs: {path: x}
        - name: dup
          event: x
          inputs: {path: x}
        - name: dup
          event: y
          inputs: {path: x}
        - name: cronfilter
          cron: "* * * * *"
          filter: "trigger.payload"
          inputs: {path: x}
        """)
    text = "\n".join(found)
    assert "trigger 'both' needs exactly one of 'cron' (a schedule) or 'event'" in text
    assert "trigger 'neither' needs exactly one of" in text
    assert "triggers[3].name: trigger 'dup' is already defined by triggers[2]" in text
    assert "trigger 'cronfilter': 'filter' is for event triggers" in text


def test_catch_up_and_max_concurrent_are_checked() -> None:
    found = errors("""
        - name: nightly
          cron: "0 2 * * *"
          catch_up: sometimes
          max_concurrent: 0
          inputs: {path: x}
        """)
    text = "\n".join(found)
    assert "triggers[0].catch_up" in text and "skip" in text and "once" in text and "all" in text
    assert "triggers[0].max_concurrent" in text


def test_steps_cannot_read_trigger_directly() -> None:
    """A step reads what a trigger gave through the SOP's inputs, so it runs the same when started by hand."""
    report = check_text(textwrap.dedent("""
        sop: s
        steps:
          - id: a
            run: echo "${{ trigger.payload }}"
        """), file="s.yaml")
    assert not report.ok
    assert "unknown name 'trigger'" in str(report.problems[0])


def test_trigger_expressions_evaluate_only_against_the_trigger_data() -> None:
    expr = compile_expression("trigger.payload.size > 10 and trigger.payload.kind in ['csv', 'tsv']",
                              TRIGGER_ROOTS)
    assert expr.evaluate({"trigger": {"payload": {"size": 11, "kind": "csv"}}}) is True
    with pytest.raises(ExpressionError, match="unknown name 'inputs'"):
        compile_expression("inputs.x", TRIGGER_ROOTS)
