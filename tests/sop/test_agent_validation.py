"""Validation of agent SOPs: the agent block, data sources and agent steps, each message as a user reads it."""

from __future__ import annotations

import json
import textwrap

import pytest

from runtime.registry import Registry
from sop import Graph, Problem, SopValidationError, check_new_steps, check_text, loads

SECRET_HINT = ("credentials must come from secret inputs, which are masked in logs, events and traces, while "
               "a plain input is recorded as given")


def problems_of(text: str, **kwargs) -> list[Problem]:
    report = check_text(textwrap.dedent(text), file="agent.yaml", **kwargs)
    return report.problems


def only(text: str, **kwargs) -> Problem:
    problems = problems_of(text, **kwargs)
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def ok(text: str, **kwargs) -> None:
    report = check_text(textwrap.dedent(text), file="agent.yaml", **kwargs)
    assert report.ok and report.problems == [], "\n".join(map(str, report.problems))


def agent_sop(agent: str, inputs: str = "{}") -> str:
    return (f"sop: a\ninputs: {inputs}\ndata_sources:\n  ledger: {{command: python, tools: [list, get]}}\n"
            f"agent: {agent}\nsteps:\n  - {{id: s, run: echo}}\n")


@pytest.fixture
def registry() -> Registry:
    reg = Registry(discover=False)
    reg.register("model", "house-llm", implementation="tests.handlers_for_tests:greet")
    return reg


# -- agent.tools -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ledger.", ".list", "ledger"])
def test_an_agent_tool_without_both_a_source_and_a_tool_is_refused(name: str) -> None:
    p = only(agent_sop(f"{{tools: ['{name}']}}"))
    assert (p.path, p.code, p.message) == ("agent.tools[0]", "bad-handler",
                                           f"expected <data source>.<tool>, got '{name}'")


def test_an_agent_tool_of_an_undeclared_source_or_tool_is_refused() -> None:
    problems = problems_of(agent_sop("{tools: [ledger.lst, books.list, ledger.get]}"))
    assert [(p.path, p.message, p.suggestion) for p in problems] == [
        ("agent.tools[0]", "data source 'ledger' declares no tool 'lst'", "did you mean 'list'?"),
        ("agent.tools[1]", "data source 'books' is not defined under 'data_sources'", None)]


# -- agent.model -----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["offline", "gemini-2.5-flash", "gemini-2.0-flash-001",
                                   "litellm:openai/gpt-4o-mini", "litellm:ollama_chat/llama3.1:8b",
                                   "litellm:openrouter/anthropic/claude-3.5-sonnet", "house-llm"])
def test_well_formed_models_are_accepted(model: str, registry: Registry) -> None:
    ok(agent_sop(f"{{model: '{model}'}}"), handlers=registry)


@pytest.mark.parametrize(("model", "message", "suggestion"), [
    ("litellm:openai", "expected litellm:<provider>/<model>, got 'litellm:openai'",
     "name the provider and its model, e.g. litellm:openai/gpt-4o-mini"),
    ("litellm:/gpt-4o", "expected litellm:<provider>/<model>, got 'litellm:/gpt-4o'",
     "name the provider and its model, e.g. litellm:openai/gpt-4o-mini"),
    ("gemini", "expected gemini-<version>, got 'gemini'", "e.g. gemini-2.5-flash"),
    ("gemini-", "expected gemini-<version>, got 'gemini-'", "e.g. gemini-2.5-flash"),
    ("openai:gpt-4o", "unknown model kind 'openai' in 'openai:gpt-4o'",
     "use offline, gemini-<version>, litellm:<provider>/<model> or a registered model name"),
    ("my model", "expected a model name without spaces, got 'my model'",
     "use offline, gemini-<version>, litellm:<provider>/<model> or a registered model name"),
    ("", "expected a model name without spaces, got ''",
     "use offline, gemini-<version>, litellm:<provider>/<model> or a registered model name"),
])
def test_a_malformed_model_is_refused(model: str, message: str, suggestion: str) -> None:
    p = only(agent_sop(f"{{model: '{model}'}}"))
    assert (p.path, p.code, p.message, p.suggestion) == ("agent.model", "bad-model", message, suggestion)


def test_an_unregistered_model_is_refused_when_the_registry_is_known(registry: Registry) -> None:
    p = only(agent_sop("{model: house-lm}"), handlers=registry)
    assert (p.path, p.code, p.message, p.suggestion) == (
        "agent.model", "unknown-model", "no model is registered as 'house-lm'", "did you mean 'house-llm'?")


def test_an_unregistered_model_that_looks_like_litellm_suggests_the_prefix(registry: Registry) -> None:
    p = only(agent_sop("{model: openai/gpt-4o}"), handlers=registry)
    assert p.suggestion == "for a LiteLLM model write litellm:openai/gpt-4o"


def test_an_unregistered_model_with_no_close_name_says_how_to_register(registry: Registry) -> None:
    p = only(agent_sop("{model: zzz}"), handlers=registry)
    assert p.suggestion == ("register a BaseLlm class or factory as kind 'model', or use offline, "
                            "gemini-<version> or litellm:<provider>/<model>")


def test_plain_model_names_are_not_checked_without_a_registry() -> None:
    ok(agent_sop("{model: zzz}"))


# -- base_url and the API key ----------------------------------------------------------------


def test_base_url_goes_with_a_litellm_model() -> None:
    ok(agent_sop("{model: 'litellm:openai/local', base_url: 'http://127.0.0.1:8000/v1'}"))
    p = only(agent_sop("{model: gemini-2.5-flash, base_url: 'http://127.0.0.1:8000/v1'}"))
    assert (p.path, p.code, p.message, p.suggestion) == (
        "agent.base_url", "bad-agent",
        "base_url is the endpoint of a litellm: model, but the model is 'gemini-2.5-flash'",
        "use model: litellm:openai/<model> for an OpenAI-compatible endpoint, or remove base_url")


def test_base_url_with_the_default_offline_model_is_refused() -> None:
    p = only(agent_sop("{base_url: 'https://api.example.com/v1'}"))
    assert p.message == "base_url is the endpoint of a litellm: model, but the model is 'offline'"


def test_the_api_key_comes_from_a_secret_input() -> None:
    ok(agent_sop("{model: gemini-2.5-flash, api_key_input: key}", "{key: {type: string, secret: true}}"))
    p = only(agent_sop("{model: gemini-2.5-flash, api_key_input: key}", "{key: {type: string}}"))
    assert (p.path, p.code) == ("agent.api_key_input", "secret-required")
    assert p.message == ("agent.api_key_input names input 'key', which holds the model's API key but is not "
                         f"secret: true; {SECRET_HINT}")
    assert p.suggestion == "mark it secret: inputs: {key: {type: string, secret: true}}"


def test_the_api_key_input_must_exist() -> None:
    p = only(agent_sop("{api_key_input: kye}", "{key: {type: string, secret: true}}"))
    assert (p.path, p.code, p.message, p.suggestion) == (
        "agent.api_key_input", "unknown-input",
        "agent.api_key_input names input 'kye', which the SOP does not declare under 'inputs'",
        "did you mean 'key'?")
    p = only(agent_sop("{api_key_input: token}"))
    assert p.suggestion == "declare it: inputs: {token: {type: string, secret: true}}"


def test_the_api_key_comes_from_one_place() -> None:
    p = only(agent_sop("{api_key_input: key, api_key_env: GEMINI_API_KEY}", "{key: {type: string, secret: true}}"))
    assert (p.path, p.code, p.message, p.suggestion) == (
        "agent.api_key_env", "bad-agent",
        "api_key_input and api_key_env are both set; the model's API key must come from one place",
        "keep api_key_input (a secret input, given at submit) or api_key_env (read where the agent runs), "
        "not both")


def test_api_key_env_is_a_variable_name() -> None:
    ok(agent_sop("{api_key_env: GEMINI_API_KEY}"))
    p = only(agent_sop("{api_key_env: 'GEMINI KEY'}"))
    assert (p.path, p.message) == ("agent.api_key_env", "api_key_env must be an environment variable name "
                                   "(letters, digits and _), got 'GEMINI KEY'")


# -- data sources ----------------------------------------------------------------------------


def source_sop(source: str, inputs: str = "{}") -> str:
    return f"sop: a\ninputs: {inputs}\ndata_sources:\n  api: {source}\nsteps:\n  - {{id: s, run: echo}}\n"


def test_a_bearer_header_from_a_plain_input_is_refused() -> None:
    p = only(source_sop("{url: 'https://mcp.example.com/mcp', headers: {Authorization: 'Bearer ${{ inputs.token }}'}}",
                        "{token: {type: string}}"))
    assert (p.path, p.code) == ("data_sources.api.headers.Authorization", "secret-required")
    assert p.message == ("header 'Authorization' of data source 'api' reads input 'token', which holds a "
                         f"credential but is not secret: true; {SECRET_HINT}")
    assert p.suggestion == "mark it secret: inputs: {token: {type: string, secret: true}}"


def test_a_bearer_header_from_a_secret_input_is_accepted() -> None:
    ok(source_sop("{url: 'https://mcp.example.com/mcp', headers: {Authorization: 'Bearer ${{ inputs.token }}'}}",
                  "{token: {type: string, secret: true}}"))


def test_an_env_value_from_a_plain_input_is_refused() -> None:
    p = only(source_sop("{command: server, env: {LEDGER_DB: '${{ inputs.db }}'}}", "{db: {type: string}}"))
    assert (p.path, p.code) == ("data_sources.api.env.LEDGER_DB", "secret-required")
    assert p.message.startswith("env variable 'LEDGER_DB' of data source 'api' reads input 'db', which holds")


@pytest.mark.parametrize(("value", "read"), [
    ("${{ steps.s.output.token }}", "steps.s"), ("${{ execution.id }}", "execution.id"),
    ("${{ inputs }}", "inputs"), ("x-${{ inputs.token ~ steps.s.output }}", "steps.s")])
def test_env_and_headers_may_read_only_inputs(value: str, read: str) -> None:
    p = only(source_sop(f"{{url: 'https://x.example', headers: {{X-Token: '{value}'}}}}",
                        "{token: {type: string, secret: true}}"))
    assert (p.path, p.code, p.suggestion) == ("data_sources.api.headers.X-Token", "bad-reference",
                                              "declare a secret input and pass the value when you submit")
    assert p.message == (
        f"header 'X-Token' of data source 'api' reads {read}, but env and headers may read only secret inputs "
        "(${{ inputs.NAME }}): the data source is connected with them as the execution starts, and "
        "credentials must come from secret inputs, never from step results or plain inputs")


def test_an_env_value_reading_an_undeclared_input_is_refused() -> None:
    p = only(source_sop("{command: server, env: {TOKEN: '${{ inputs.tokn }}'}}", "{token: {type: string, secret: true}}"))
    assert (p.code, p.message, p.suggestion) == (
        "unknown-input", "env variable 'TOKEN' of data source 'api' reads input 'tokn', which the SOP does not "
        "declare under 'inputs'", "did you mean 'token'?")


def test_a_broken_expression_in_a_header_is_refused() -> None:
    problems = problems_of(source_sop("{url: 'https://x.example', headers: {A: '${{ inputs.token '}}",
                                      "{token: {type: string, secret: true}}"))
    assert [(p.code, p.message) for p in problems] == [("bad-expression", "'${{' is not closed by '}}'")]


@pytest.mark.parametrize(("source", "label"), [
    ("{url: 'https://x.example', headers: {Authorization: 'Bearer abc123'}}", "header 'Authorization'"),
    ("{command: server, env: {GITHUB_TOKEN: ghp_abc}}", "env variable 'GITHUB_TOKEN'"),
    ("{command: server, env: {OPENAI_API_KEY: sk-abc}}", "env variable 'OPENAI_API_KEY'")])
def test_a_credential_written_into_the_sop_is_a_warning(source: str, label: str) -> None:
    report = check_text(source_sop(source), file="agent.yaml")
    assert report.ok
    [p] = report.problems
    assert (p.severity, p.code) == ("warning", "literal-credential")
    assert p.message == (f"{label} of data source 'api' is written into the SOP; the SOP's text is stored "
                         "with every execution, so the credential would be too")
    assert p.suggestion == ("pass it in a secret input: \"${{ inputs.api_token }}\" with inputs: {api_token: "
                            "{type: string, secret: true}}")


def test_plain_settings_in_env_and_headers_are_fine() -> None:
    ok(source_sop("{command: server, env: {LOG_LEVEL: debug, LEDGER_DB: /tmp/l.db}}"))
    ok(source_sop("{url: 'https://x.example', headers: {Accept: application/json}}"))


def test_a_shell_command_line_as_a_stdio_command_is_refused() -> None:
    p = only(source_sop("{command: 'python -m x; rm -rf /'}"))
    assert (p.path, p.code, p.severity) == ("data_sources.api.command", "bad-command", "error")
    assert p.message == ("command 'python -m x; rm -rf /' holds shell syntax (';'), but a data source's command "
                         "is run directly, without a shell: it would not be interpreted, only looked up as a "
                         "program name")
    assert p.suggestion == ("put the program alone in command and each argument in args: command: python, "
                            "args: [\"-m\", \"x\"]")


@pytest.mark.parametrize(("command", "shown"), [
    ("server $(cat /etc/passwd)", "'$'"), ("server | tee log", "'|'"), ("server && evil", "'&'"),
    ("`evil`", "'`'"), ("server > /tmp/out", "'>'"), ("server\nevil", "'\\n'")])
def test_any_shell_syntax_in_a_stdio_command_is_refused(command: str, shown: str) -> None:
    p = only(source_sop("{command: " + json.dumps(command) + "}"))
    assert p.code == "bad-command"
    assert f"holds shell syntax ({shown})" in p.message


def test_a_command_with_arguments_in_it_is_refused() -> None:
    p = only(source_sop("{command: 'uvx mcp-server-time --local-timezone UTC'}"))
    assert p.message == ("command 'uvx mcp-server-time --local-timezone UTC' holds spaces, but a data source's "
                         "command is run directly, without a shell, so the whole text would be looked up as one "
                         "program name")
    assert p.suggestion == ("put the program alone in command and each argument in args: command: uvx, "
                            "args: [\"mcp-server-time\", \"--local-timezone\", \"UTC\"]")


def test_a_program_and_its_args_are_accepted() -> None:
    ok(source_sop("{command: /usr/bin/python3, args: [-m, 'ledger; not a shell', '$HOME']}"))


@pytest.mark.parametrize(("source", "path", "field"), [
    ("{command: server, args: ['--token', '${{ inputs.token }}']}", "data_sources.api.args[1]", "args"),
    ("{url: 'https://${{ inputs.token }}.example.com'}", "data_sources.api.url", "url")])
def test_only_env_and_headers_are_templated(source: str, path: str, field: str) -> None:
    p = only(source_sop(source, "{token: {type: string, secret: true}}"))
    assert (p.path, p.code) == (path, "not-templated")
    why = "; arguments are also visible to every local user in the process list" if field == "args" else ""
    assert p.message == (f"data source 'api' passes its {field} as written: only env and headers values are "
                         f"rendered (from secret inputs){why}")


def test_idempotent_tools_are_tools_the_source_declares() -> None:
    ok(source_sop("{command: server, tools: [list, get, delete], idempotent_tools: [list, get]}"))
    ok(source_sop("{command: server, idempotent_tools: [anything]}"))  # no tools declared: nothing to check
    p = only(source_sop("{command: server, tools: [list, get], idempotent_tools: [lst]}"))
    assert (p.path, p.code, p.message, p.suggestion) == (
        "data_sources.api.idempotent_tools[0]", "unknown-tool",
        "data source 'api' declares no tool 'lst', so it cannot list it as idempotent", "did you mean 'list'?")


# -- agent steps -----------------------------------------------------------------------------


def step_sop(step: str) -> str:
    return ("sop: a\ndata_sources:\n  ledger: {command: python, tools: [list, get]}\nsteps:\n"
            f"  - {{id: s, run: echo}}\n  - {{id: ag, uses: agent, depends_on: [s], {step}}}\n")


def test_an_agent_step_is_accepted() -> None:
    ok(step_sop("with: {instruction: 'Check ${{ steps.s.output }}', tools: [ledger.list], model: gemini-2.5-flash}"))
    ok(step_sop("with: {instruction: Check the ledger}"))


def test_an_agent_step_is_a_built_in_handler(registry: Registry) -> None:
    ok(step_sop("with: {instruction: Check the ledger}"), handlers=registry)


def test_an_agent_step_needs_an_instruction() -> None:
    p = only(step_sop("with: {tools: [ledger.list]}"))
    assert (p.path, p.code, p.message, p.suggestion) == (
        "steps[1].with", "bad-agent-step", "an agent step needs with.instruction, what the agent should do",
        "with: {instruction: \"Reconcile the ledger with the bank statement\"}")
    p = only(step_sop("when: 'true'"))
    assert (p.path, p.code) == ("steps[1].uses", "bad-agent-step")


@pytest.mark.parametrize(("instruction", "got"), [("''", "empty text"), ("'  '", "empty text"), ("3", "int"),
                                                  ("[a]", "list")])
def test_an_agent_step_instruction_is_non_empty_text(instruction: str, got: str) -> None:
    p = only(step_sop(f"with: {{instruction: {instruction}}}"))
    assert (p.path, p.message) == ("steps[1].with.instruction",
                                   f"with.instruction of an agent step must be non-empty text, got {got}")


def test_an_agent_step_tools_are_checked_like_agent_tools() -> None:
    problems = problems_of(step_sop("with: {instruction: go, tools: [ledger.lst, nope.x, ledger, 3]}"))
    assert [(p.path, p.message) for p in problems] == [
        ("steps[1].with.tools[0]", "data source 'ledger' declares no tool 'lst'"),
        ("steps[1].with.tools[1]", "data source 'nope' is not defined under 'data_sources'"),
        ("steps[1].with.tools[2]", "expected <data source>.<tool>, got 'ledger'"),
        ("steps[1].with.tools[3]", "expected <data source>.<tool>, got int")]
    p = only(step_sop("with: {instruction: go, tools: ledger.list}"))
    assert (p.path, p.message) == ("steps[1].with.tools", "expected a list of <data source>.<tool> names, got str")


def test_an_agent_step_model_is_checked_like_the_agent_model(registry: Registry) -> None:
    p = only(step_sop("with: {instruction: go, model: 'litellm:openai'}"))
    assert (p.path, p.code) == ("steps[1].with.model", "bad-model")
    p = only(step_sop("with: {instruction: go, model: house-lm}"), handlers=registry)
    assert (p.path, p.code, p.suggestion) == ("steps[1].with.model", "unknown-model", "did you mean 'house-llm'?")
    p = only(step_sop("with: {instruction: go, model: 7}"))
    assert (p.path, p.message) == ("steps[1].with.model", "expected a model name (text), got int")


def test_an_agent_step_takes_only_its_own_fields() -> None:
    p = only(step_sop("with: {instruction: go, tool: [ledger.list]}"))
    assert (p.path, p.code, p.message, p.suggestion) == (
        "steps[1].with.tool", "unknown-field", "an agent step takes instruction, tools and model under with:, "
        "not 'tool'", "did you mean 'tools'?")


def test_an_agent_step_added_to_a_running_sop_is_checked() -> None:
    sop = loads(step_sop("with: {instruction: go}"))
    graph = Graph.from_dependencies({s.id: list(s.depends_on) for s in sop.steps})
    with pytest.raises(SopValidationError) as caught:
        check_new_steps(sop, graph, [{"id": "more", "uses": "agent", "with": {"tools": ["ledger.list"]}}])
    assert [p.code for p in caught.value.problems] == ["bad-agent-step"]


# -- hostile transports ----------------------------------------------------------------------


def test_a_header_value_with_a_line_break_is_header_injection() -> None:
    p = only(source_sop('{url: "https://x.example", headers: {X-Id: "a\\r\\nHost: evil.example"}}'))
    assert (p.path, p.code, p.message) == (
        "data_sources.api.headers.X-Id", "bad-header", "header 'X-Id' of data source 'api' holds a line break "
        "or NUL, which would end the header and start another (header injection)")


def test_a_header_name_must_be_a_token() -> None:
    p = only(source_sop('{url: "https://x.example", headers: {"X Id: a": b}}'))
    assert (p.code, p.message) == ("bad-header", "header name 'X Id: a' of data source 'api' is not a valid HTTP "
                                   "header name")


@pytest.mark.parametrize("key", ["1X", "A=B", "A B", ""])
def test_an_env_name_must_be_a_variable_name(key: str) -> None:
    p = only(source_sop(f'{{command: server, env: {{"{key}": a}}}}'))
    assert (p.code, p.message) == ("bad-name", f"env variable name {key!r} of data source 'api' is not a variable "
                                   "name (letters, digits and _, not starting with a digit)")


def test_an_env_value_with_a_nul_is_refused() -> None:
    p = only(source_sop('{command: server, env: {A: "x\\0y"}}'))
    assert (p.code, p.message) == ("bad-value", "env variable 'A' of data source 'api' holds a NUL character, "
                                   "which no environment variable can hold")


def test_a_password_in_the_url_is_a_warning() -> None:
    report = check_text(source_sop("{url: 'https://bot:hunter22@mcp.example.com/mcp'}"))
    [p] = report.problems
    assert report.ok and (p.severity, p.code, p.path) == ("warning", "literal-credential", "data_sources.api.url")
    assert p.message == ("url of data source 'api' holds a password; the SOP's text is stored with every "
                         "execution, so the credential would be too")


def test_credentials_over_plain_http_are_a_warning_except_to_this_machine() -> None:
    source = "{url: '%s', headers: {Authorization: 'Bearer ${{ inputs.token }}'}}"
    secret = "{token: {type: string, secret: true}}"
    report = check_text(source_sop(source % "http://mcp.example.com/mcp", secret))
    [p] = report.problems
    assert report.ok and (p.severity, p.code, p.suggestion) == ("warning", "insecure-transport", "use https://")
    assert p.message == ("data source 'api' sends credentials over plain http:// to mcp.example.com; anyone on "
                         "the network path can read them")
    for url in ("http://127.0.0.1:8000/mcp", "http://localhost:8000/mcp", "https://mcp.example.com/mcp"):
        ok(source_sop(source % url, secret))
    ok(source_sop("{url: 'http://mcp.example.com/mcp', headers: {Accept: application/json}}"))


@pytest.mark.parametrize(("source", "code"), [
    ('{url: "https://x.example", headers: {"X-Id\\n": a}}', "bad-header"),
    ('{command: server, env: {"A\\n": a}}', "bad-name")])
def test_a_name_ending_in_a_line_break_is_refused(source: str, code: str) -> None:
    assert only(source_sop(source)).code == code


@pytest.mark.parametrize("model", ["gemini-2.5-flash\\n", "litellm:openai/gpt-4o\\n"])
def test_a_model_ending_in_a_line_break_is_refused(model: str) -> None:
    assert only(agent_sop(f'{{model: "{model}"}}')).code == "bad-model"


def test_an_api_key_env_ending_in_a_line_break_is_refused() -> None:
    assert only(agent_sop('{api_key_env: "KEY\\n"}')).code == "bad-agent"


def test_a_step_added_to_a_running_sop_may_use_only_tools_its_sources_declare() -> None:
    sop = loads(step_sop("with: {instruction: go}"))
    graph = Graph.from_dependencies({s.id: list(s.depends_on) for s in sop.steps})
    with pytest.raises(SopValidationError) as caught:
        check_new_steps(sop, graph, [{"id": "m", "uses": "mcp:ledger/lst"},
                                     {"id": "n", "uses": "agent", "with": {"instruction": "go", "tools": ["ledger.gt"]}}])
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("steps[0].uses", "data source 'ledger' declares no tool 'lst'"),
        ("steps[1].with.tools[0]", "data source 'ledger' declares no tool 'gt'")]


def test_an_agent_step_instruction_may_not_read_a_secret_input() -> None:
    text = ("sop: a\ninputs: {token: {type: string, secret: true}, account: {type: string}}\nsteps:\n"
            "  - {id: ag, uses: agent, with: {instruction: 'Check ${{ inputs.account }} with ${{ inputs.token }}'}}\n")
    p = only(text)
    assert (p.path, p.code, p.message, p.suggestion) == (
        "steps[0].with.instruction", "secret-in-prompt",
        "the instruction reads secret input 'token', but an instruction is sent to the model's provider as it is",
        "give the secret to the tool that needs it (a data source's env or headers), not to the model")


def test_the_agent_instruction_may_not_read_a_secret_input() -> None:
    p = only(agent_sop("{instruction: 'Use ${{ inputs.key }}'}", "{key: {type: string, secret: true}}"))
    assert (p.path, p.code) == ("agent.instruction", "secret-in-prompt")
