"""``sopflow validate``, ``graph`` and ``schema``, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from runtime.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

BAD = """\
sop: orders
steps:
  - id: fetch
    run: echo
  - id: ship
    run: echo
    depends_on: [fetc]
"""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "orders.yaml"
    path.write_text(BAD)
    return path


# -- validate --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_validate_accepts_each_example(runner: CliRunner, path: Path) -> None:
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: valid: SOP " in result.output
    assert "mode system_design" in result.output
    assert "critical path " in result.output


def test_validate_accepts_several_files_at_once(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = runner.invoke(main, ["validate", *(f"examples/{p.name}" for p in EXAMPLES)])
    assert result.exit_code == 0, result.output
    assert result.output.count(": valid: SOP ") == len(EXAMPLES)


def test_validate_rejects_a_bad_file_naming_line_column_and_hint(runner: CliRunner, bad_file: Path) -> None:
    result = runner.invoke(main, ["validate", str(bad_file)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == (f"{bad_file}:7:18: steps[1].depends_on[0]: error step 'ship' depends on 'fetc', "
                        "which is not defined in orders.yaml")
    assert lines[1].strip() == "hint: did you mean 'fetch'?"
    assert lines[-1] == f"✗ {bad_file}: 1 problem"


def test_validate_fails_when_any_file_is_bad(runner: CliRunner, bad_file: Path) -> None:
    result = runner.invoke(main, ["validate", str(EXAMPLES[0]), str(bad_file)])
    assert result.exit_code == 1
    assert ": valid: SOP " in result.output and "✗ " in result.output


def test_validate_counts_every_problem(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text("sop: Orders\nsteps:\n  - {id: a, run: echo, depends_on: [b]}\n  - {id: a, run: echo}\n")
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == f"✗ {path}: 3 problems"


def test_validate_reports_a_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "cannot read SOP file: No such file or directory" in result.output


def test_validate_needs_a_file(runner: CliRunner) -> None:
    result = runner.invoke(main, ["validate"])
    assert result.exit_code == 2
    assert "Missing argument" in result.output


def test_validate_json_lists_problems_with_their_location(runner: CliRunner, bad_file: Path) -> None:
    result = runner.invoke(main, ["validate", "--format", "json", str(bad_file)])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["file"] == str(bad_file)
    assert doc["valid"] is False
    assert doc["mode"] is None
    assert doc["problems"] == [{
        "severity": "error",
        "code": "unknown-dependency",
        "file": str(bad_file),
        "line": 7,
        "column": 18,
        "path": "steps[1].depends_on[0]",
        "message": "step 'ship' depends on 'fetc', which is not defined in orders.yaml",
        "suggestion": "did you mean 'fetch'?",
    }]


def test_validate_json_for_several_files_is_a_list(runner: CliRunner, bad_file: Path) -> None:
    result = runner.invoke(main, ["validate", "--format", "json", str(EXAMPLES[0]), str(bad_file)])
    assert result.exit_code == 1
    docs = json.loads(result.stdout)
    assert [d["valid"] for d in docs] == [True, False]
    assert docs[0]["problems"] == [] and docs[0]["mode"] == "system_design"


def test_validate_json_for_a_valid_file(runner: CliRunner) -> None:
    result = runner.invoke(main, ["validate", "--format", "json", str(EXAMPLES[0])])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["valid"] is True


# -- graph -----------------------------------------------------------------------------------


def test_graph_text_shows_stages_and_critical_path(runner: CliRunner) -> None:
    result = runner.invoke(main, ["graph", str(ROOT / "examples" / "hello-linear.yaml")])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "hello-linear 1.0: 3 steps in 3 stages"
    for step in ("greet", "shout", "count"):
        assert f" {step}  (" in result.stdout
    assert "critical path (*): greet -> shout -> count" in result.stdout


def test_graph_mermaid_is_a_flowchart(runner: CliRunner) -> None:
    result = runner.invoke(main, ["graph", "--format", "mermaid",
                                  str(ROOT / "examples" / "invoice-reconciliation.yaml")])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("flowchart")
    for edge in ("fetch --> statement", "statement --> check"):
        assert edge in result.stdout
    assert 'check -->|"when steps.check.output.mismatches > 0"| escalate' in result.stdout


def test_graph_dot_is_a_digraph(runner: CliRunner) -> None:
    result = runner.invoke(main, ["graph", "--format", "dot", str(ROOT / "examples" / "hello-linear.yaml")])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith('digraph "hello-linear" {')
    assert '"greet" -> "shout";' in result.stdout
    assert '"shout" -> "count";' in result.stdout


def test_graph_of_an_invalid_file_reports_problems_and_fails(runner: CliRunner, bad_file: Path) -> None:
    result = runner.invoke(main, ["graph", str(bad_file)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"{bad_file}:7:18: steps[1].depends_on[0]" in result.stderr
    assert "did you mean 'fetch'?" in result.stderr


def test_graph_refuses_an_unknown_format(runner: CliRunner) -> None:
    result = runner.invoke(main, ["graph", "--format", "png", str(EXAMPLES[0])])
    assert result.exit_code == 2
    assert "'png' is not one of" in result.output


# -- schema ----------------------------------------------------------------------------------


def test_schema_is_a_json_schema_of_the_sop_format(runner: CliRunner) -> None:
    result = runner.invoke(main, ["schema"])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["title"] == "sopflow SOP"
    assert doc["type"] == "object"
    assert {"sop", "steps"} <= set(doc["required"])
    assert doc["properties"]["steps"]["type"] == "array"
    step = doc["$defs"]["Step"]
    assert "with" in step["properties"] and "with_" not in step["properties"]
    assert "depends_on" in step["properties"]
    assert step["additionalProperties"] is False


def test_help_lists_the_sop_commands(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("validate", "graph", "schema"):
        assert command in result.output


# -- as an installed command -----------------------------------------------------------------


def test_the_installed_sopflow_command_validates_an_example() -> None:
    script = Path(sys.executable).parent / "sopflow"
    assert script.exists(), f"sopflow is not installed next to {sys.executable}"
    done = subprocess.run([str(script), "validate", "examples/hello-linear.yaml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "examples/hello-linear.yaml: valid: SOP hello-linear 1.0, 3 steps" in done.stdout


def test_validate_does_not_import_ray() -> None:
    code = ("import sys; sys.argv=['sopflow','validate','examples/hello-linear.yaml']; "
            "from runtime.cli import main\n"
            "try: main()\n"
            "except SystemExit: pass\n"
            "print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False", done.stdout


def test_validate_shows_each_unquoted_shell_reference_as_a_warning(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text("sop: flags\ninputs:\n  flags: {type: string}\nsteps:\n"
                    "  - id: list\n    run: \"ls ${{ inputs.flags | unquoted }}\"\n")
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}:6:" in result.output and "steps[0].run" in result.output and "warning" in result.output
    assert "pasted into the command as shell text" in result.output


# -- validate --mode -------------------------------------------------------------------------

FAN_OUT = """\
sop: orders
steps:
  - {id: fetch, run: echo}
  - {id: a, run: echo, depends_on: [fetch]}
  - {id: b, run: echo, depends_on: [fetch]}
"""


def test_validate_mode_refuses_a_mode_that_does_not_fit_with_the_submit_reason(
        runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "fan.yaml"
    path.write_text(FAN_OUT)
    result = runner.invoke(main, ["validate", "--mode", "agent_centric", str(path)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{path}:1:1: error cannot run this SOP in mode agent_centric: agent_centric needs a checklist an "
        "agent can follow in order, but step 'fetch' fans out to 2 steps; use mode: system_design (or auto) "
        "for branching dependencies",
        f"✗ {path}: 1 problem"]


def test_validate_mode_accepts_a_mode_that_fits(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "fan.yaml"
    path.write_text(FAN_OUT.replace("sop: orders", "sop: orders\nmode: agent_centric"))
    assert runner.invoke(main, ["validate", str(path)]).exit_code == 1  # the file's own mode does not fit
    result = runner.invoke(main, ["validate", "--mode", "system_design", str(path)])
    assert result.exit_code == 0, result.output
    assert "mode system_design (requested system_design)" in result.output


def test_validate_mode_is_in_the_json_report(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "seq.yaml"
    path.write_text("sop: seq\nsteps:\n  - {id: a, run: echo}\n  - {id: b, run: echo, depends_on: [a]}\n")
    doc = json.loads(runner.invoke(main, ["validate", "--format", "json", "--mode", "agent_centric",
                                          str(path)]).stdout)
    assert (doc["valid"], doc["mode"]) == (True, "agent_centric")


def test_validate_mode_refuses_an_unknown_mode(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "seq.yaml"
    path.write_text("sop: seq\nsteps:\n  - {id: a, run: echo}\n")
    result = runner.invoke(main, ["validate", "--mode", "agentic", str(path)])
    assert result.exit_code == 2
    assert "'agentic' is not one of 'system_design', 'agent_centric', 'auto'" in result.output


def test_validate_prints_agent_sop_problems_with_hints(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("sop: agent\ninputs:\n  token: {type: string}\ndata_sources:\n  api:\n"
                    "    url: https://mcp.example.com/mcp\n"
                    "    headers: {Authorization: \"Bearer ${{ inputs.token }}\"}\n"
                    "steps:\n  - {id: a, uses: agent, with: {instruction: Check the api}}\n")
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{path}:7:30: data_sources.api.headers.Authorization: error header 'Authorization' of data source "
        "'api' reads input 'token', which holds a credential but is not secret: true; credentials must come "
        "from secret inputs, which are masked in logs, events and traces, while a plain input is recorded "
        "as given",
        "    hint: mark it secret: inputs: {token: {type: string, secret: true}}",
        f"✗ {path}: 1 problem"]
