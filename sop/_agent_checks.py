"""The semantic checks of agent SOPs: the agent block, data sources and ``uses: agent`` steps.

Each check reads the raw document defensively (the schema layer reports wrong
types) and reports through ``problem(path, message, *, code, suggestion, severity)``,
the reporter of :class:`sop.validate._Checker`, so every problem carries its
file, line and path like the other checks.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable
from typing import Any, Protocol
from urllib.parse import urlsplit

from sop._suggest import did_you_mean
from sop.expressions import ExpressionError, compile_expression, find_references

MODEL_KINDS_HINT = "use offline, gemini-<version>, litellm:<provider>/<model> or a registered model name"
AGENT_STEP_FIELDS = ("instruction", "tools", "model")
"""What an agent step takes under ``with:``."""

# Matched with fullmatch: '$' would also accept a trailing newline.
_GEMINI = re.compile(r"gemini-[A-Za-z0-9][A-Za-z0-9._\-]*")
_LITELLM = re.compile(r"litellm:([A-Za-z0-9_\-]+)/(\S+)")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A stdio command is exec'd as one program, without a shell: any of these means the author
# wrote a shell command line, whose separators, quotes and expansions would not work.
_SHELL_SYNTAX = re.compile(r"[;&|<>`$()'\"*?\n\\]")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 token
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "x-api-key", "api-key")
_CREDENTIAL_ENV = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|CREDENTIAL", re.IGNORECASE)
_SECRET_HINT = "credentials must come from secret inputs, which are masked in logs, events and traces, " \
               "while a plain input is recorded as given"


class Reporter(Protocol):
    """How a check reports a problem (``_Checker.problem``)."""

    def __call__(self, path: tuple, message: str, *, code: str, suggestion: str | None = None,
                 severity: str = "error") -> None: ...


class ModelCatalog(Protocol):
    """What validation needs to know about registered models (:class:`runtime.Registry` has it)."""

    def has_model(self, name: str) -> bool: ...

    def model_names(self) -> Iterable[str]: ...


def models_of(catalog: Any) -> ModelCatalog | None:
    """The catalog as a :class:`ModelCatalog`, or ``None`` when it knows nothing of models."""
    if catalog is not None and callable(getattr(catalog, "has_model", None)) \
            and callable(getattr(catalog, "model_names", None)):
        return catalog
    return None


def model_kind(model: str) -> str | None:
    """``offline``, ``gemini``, ``litellm`` or ``registered`` for a well-formed name; else ``None``."""
    if model == "offline":
        return "offline"
    if _GEMINI.fullmatch(model):
        return "gemini"
    if _LITELLM.fullmatch(model):
        return "litellm"
    if model and ":" not in model and not model.startswith("gemini") and not any(c.isspace() for c in model):
        return "registered"
    return None


def check_model(problem: Reporter, path: tuple, model: Any, models: ModelCatalog | None) -> None:
    """A model name: its syntax, and, when a catalog is given, that a plain name is registered."""
    if not isinstance(model, str):
        problem(path, f"expected a model name (text), got {type(model).__name__}", code="wrong-type")
        return
    kind = model_kind(model)
    if kind is None:
        if model.startswith("litellm:"):
            problem(path, f"expected litellm:<provider>/<model>, got {model!r}", code="bad-model",
                    suggestion="name the provider and its model, e.g. litellm:openai/gpt-4o-mini")
        elif model.startswith("gemini"):
            problem(path, f"expected gemini-<version>, got {model!r}", code="bad-model",
                    suggestion="e.g. gemini-2.5-flash")
        elif ":" in model:
            problem(path, f"unknown model kind {model.split(':')[0]!r} in {model!r}", code="bad-model",
                    suggestion=MODEL_KINDS_HINT)
        else:
            problem(path, f"expected a model name without spaces, got {model!r}", code="bad-model",
                    suggestion=MODEL_KINDS_HINT)
    elif kind == "registered" and models is not None and not models.has_model(model):
        problem(path, f"no model is registered as {model!r}", code="unknown-model",
                suggestion=did_you_mean(model, ["offline", *models.model_names()])
                or (f"for a LiteLLM model write litellm:{model}" if "/" in model else
                    "register a BaseLlm class or factory as kind 'model', or use offline, gemini-<version> "
                    "or litellm:<provider>/<model>"))


def check_tool(problem: Reporter, path: tuple, source: str, tool: str, sources: dict) -> None:
    """``tool`` of data source ``source``: the source is declared and, if it lists tools, has it."""
    if source not in sources:
        problem(path, f"data source {source!r} is not defined under 'data_sources'",
                code="unknown-source", suggestion=did_you_mean(source, sources))
        return
    declared = sources[source].get("tools") if isinstance(sources[source], dict) else None
    if isinstance(declared, list) and tool not in declared:
        problem(path, f"data source {source!r} declares no tool {tool!r}", code="unknown-tool",
                suggestion=did_you_mean(tool, declared) or f"it offers {', '.join(map(str, declared))}")


def check_tool_names(problem: Reporter, path: tuple, tools: Any, sources: dict) -> None:
    """A list of ``<data source>.<tool>`` names (``agent.tools``, an agent step's ``with.tools``)."""
    if not isinstance(tools, list):
        if tools is not None:
            problem(path, f"expected a list of <data source>.<tool> names, got {type(tools).__name__}",
                    code="wrong-type")
        return
    for k, name in enumerate(tools):
        source, dot, tool = name.partition(".") if isinstance(name, str) else ("", "", "")
        if not (source and dot and tool):
            shown = repr(name) if isinstance(name, str) else type(name).__name__
            problem(path + (k,), f"expected <data source>.<tool>, got {shown}", code="bad-handler")
        else:
            check_tool(problem, path + (k,), source, tool, sources)


def check_agent(problem: Reporter, agent: Any, sources: dict, inputs: dict,
                models: ModelCatalog | None) -> None:
    """The SOP's ``agent:`` block: tools, model, base_url and where the API key comes from."""
    if not isinstance(agent, dict):
        return
    check_tool_names(problem, ("agent", "tools"), agent.get("tools"), sources)
    if isinstance(agent.get("instruction"), str):
        _no_secret_in_prompt(problem, ("agent", "instruction"), agent["instruction"], inputs)
    model = agent.get("model", "offline")
    if "model" in agent:
        check_model(problem, ("agent", "model"), model, models)
    kind = model_kind(model) if isinstance(model, str) else None
    if isinstance(agent.get("base_url"), str) and kind not in (None, "litellm"):
        problem(("agent", "base_url"), f"base_url is the endpoint of a litellm: model, but the model is {model!r}",
                code="bad-agent", suggestion="use model: litellm:openai/<model> for an OpenAI-compatible "
                "endpoint, or remove base_url")
    key_input, key_env = agent.get("api_key_input"), agent.get("api_key_env")
    if isinstance(key_input, str):
        _secret_input(problem, ("agent", "api_key_input"), key_input, inputs,
                      f"agent.api_key_input names input {key_input!r}", "the model's API key")
    if isinstance(key_env, str) and not _ENV_NAME.fullmatch(key_env):
        problem(("agent", "api_key_env"), f"api_key_env must be an environment variable name (letters, "
                f"digits and _), got {key_env!r}", code="bad-agent")
    if key_input is not None and key_env is not None:
        problem(("agent", "api_key_env"), "api_key_input and api_key_env are both set; the model's API key "
                "must come from one place", code="bad-agent",
                suggestion="keep api_key_input (a secret input, given at submit) or api_key_env (read where "
                "the agent runs), not both")


def _secret_input(problem: Reporter, path: tuple, name: str, inputs: dict, what: str, holds: str) -> None:
    """``name`` is a declared input with ``secret: true``."""
    if name not in inputs:
        problem(path, f"{what}, which the SOP does not declare under 'inputs'", code="unknown-input",
                suggestion=did_you_mean(name, inputs) or f"declare it: inputs: {{{name}: {{type: string, "
                "secret: true}}")
    elif not (isinstance(inputs[name], dict) and inputs[name].get("secret") is True):
        problem(path, f"{what}, which holds {holds} but is not secret: true; {_SECRET_HINT}",
                code="secret-required", suggestion=f"mark it secret: inputs: {{{name}: {{type: string, "
                "secret: true}}")


def check_data_sources(problem: Reporter, sources: dict, inputs: dict) -> None:
    """Each data source: its command, what is templated, its credentials and idempotent tools."""
    for name, ds in sources.items():
        if not isinstance(ds, dict):
            continue
        where = ("data_sources", name)
        if isinstance(ds.get("command"), str):
            _command(problem, where + ("command",), ds["command"])
        for path, value in ((("command",), ds.get("command")), (("url",), ds.get("url")),
                            *((("args", k), v) for k, v in enumerate(_list(ds.get("args"))))):
            if isinstance(value, str) and "${{" in value:
                why = ("; arguments are also visible to every local user in the process list"
                       if path[0] == "args" else "")
                problem(where + path, f"data source {name!r} passes its {path[0]} as written: only env and "
                        f"headers values are rendered (from secret inputs){why}", code="not-templated",
                        suggestion="pass the value to the server through env: (e.g. env: {TOKEN: "
                        "\"${{ inputs.token }}\"}) or a header")
        for section, label in (("env", "env variable"), ("headers", "header")):
            values = ds.get(section)
            for key, value in (values.items() if isinstance(values, dict) else ()):
                if isinstance(value, str):
                    _credential(problem, where + (section, key), f"{label} {key!r} of data source {name!r}",
                                section, str(key), value, inputs)
        _transport(problem, where, name, ds)
        declared, idempotent = ds.get("tools"), ds.get("idempotent_tools")
        if isinstance(declared, list):
            for k, tool in enumerate(_list(idempotent)):
                if isinstance(tool, str) and tool not in declared:
                    problem(where + ("idempotent_tools", k), f"data source {name!r} declares no tool {tool!r}, "
                            "so it cannot list it as idempotent", code="unknown-tool",
                            suggestion=did_you_mean(tool, declared) or
                            f"it offers {', '.join(map(str, declared))}")


def _transport(problem: Reporter, where: tuple, name: str, ds: dict) -> None:
    """Env names, header names and values that stay what they say, and credentials kept off the wire."""
    env, headers = ds.get("env"), ds.get("headers")
    for key, value in (env.items() if isinstance(env, dict) else ()):
        if not _ENV_NAME.fullmatch(str(key)):
            problem(where + ("env", key), f"env variable name {key!r} of data source {name!r} is not a variable "
                    "name (letters, digits and _, not starting with a digit)", code="bad-name")
        elif isinstance(value, str) and "\0" in value:
            problem(where + ("env", key), f"env variable {key!r} of data source {name!r} holds a NUL character, "
                    "which no environment variable can hold", code="bad-value")
    sends_credentials = False
    for key, value in (headers.items() if isinstance(headers, dict) else ()):
        if not _HEADER_NAME.fullmatch(str(key)):
            problem(where + ("headers", key), f"header name {key!r} of data source {name!r} is not a valid "
                    "HTTP header name", code="bad-header")
        elif isinstance(value, str) and any(c in value for c in "\r\n\0"):
            problem(where + ("headers", key), f"header {key!r} of data source {name!r} holds a line break or "
                    "NUL, which would end the header and start another (header injection)", code="bad-header")
        sends_credentials |= str(key).lower() in _CREDENTIAL_HEADERS or (isinstance(value, str) and "${{" in value)
    url = ds.get("url")
    if not isinstance(url, str):
        return
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        password = parts.password
    except ValueError:
        return  # the schema layer reports a URL it cannot read
    if password:
        problem(where + ("url",), f"url of data source {name!r} holds a password; the SOP's text is stored with "
                "every execution, so the credential would be too", code="literal-credential", severity="warning",
                suggestion="send it in a header from a secret input: headers: {Authorization: "
                "\"Bearer ${{ inputs.api_token }}\"}")
    if sends_credentials and parts.scheme == "http" and host not in _LOOPBACK:
        problem(where + ("url",), f"data source {name!r} sends credentials over plain http:// to {host}; anyone "
                "on the network path can read them", code="insecure-transport", severity="warning",
                suggestion="use https://")


def _command(problem: Reporter, path: tuple, command: str) -> None:
    """A stdio command is one program, exec'd without a shell."""
    syntax = _SHELL_SYNTAX.search(command)
    if syntax is None and not any(c.isspace() for c in command.strip()):
        return
    words = command[:syntax.start()] if syntax else command
    try:
        parts = shlex.split(words)
    except ValueError:
        parts = words.split()
    fix = (f"put the program alone in command and each argument in args: command: {parts[0]}, "
           f"args: {json.dumps(parts[1:])}" if parts else "put the program alone in command and each argument in args")
    if syntax is not None:
        problem(path, f"command {command!r} holds shell syntax ({syntax.group()!r}), but a data source's command "
                "is run directly, without a shell: it would not be interpreted, only looked up as a program "
                "name", code="bad-command", suggestion=fix)
    else:
        problem(path, f"command {command!r} holds spaces, but a data source's command is run directly, without "
                "a shell, so the whole text would be looked up as one program name", code="bad-command",
                suggestion=fix)


def _credential(problem: Reporter, path: tuple, what: str, section: str, key: str, value: str,
                inputs: dict) -> None:
    """An env or header value: it may read only secret inputs, and a credential is never written out."""
    if "${{" not in value:
        credential = key.lower() in _CREDENTIAL_HEADERS if section == "headers" else _CREDENTIAL_ENV.search(key)
        if credential and value.strip():
            problem(path, f"{what} is written into the SOP; the SOP's text is stored with every execution, so "
                    "the credential would be too", code="literal-credential", severity="warning",
                    suggestion="pass it in a secret input: \"${{ inputs.api_token }}\" with inputs: {api_token: "
                    "{type: string, secret: true}}")
        return
    texts = find_references(value)
    if value.count("${{") != len(texts):
        problem(path, "'${{' is not closed by '}}'", code="bad-expression")
    for text in texts:
        try:
            expr = compile_expression(text)
        except ExpressionError as e:
            problem(path, str(e), code="bad-expression", suggestion=e.suggestion)
            continue
        for ref in expr.references:
            if ref.root != "inputs" or ref.name is None:
                read = ref.root + (f".{ref.name}" if ref.name else "")
                problem(path, f"{what} reads {read}, but env and headers may read only secret inputs "
                        "(${{ inputs.NAME }}): the data source is connected with them as the execution starts, "
                        "and credentials must come from secret inputs, never from step results or plain inputs",
                        code="bad-reference",
                        suggestion="declare a secret input and pass the value when you submit")
            else:
                _secret_input(problem, path, ref.name, inputs, f"{what} reads input {ref.name!r}", "a credential")


def check_agent_step(problem: Reporter, where: tuple, step: dict, sources: dict, inputs: dict,
                     models: ModelCatalog | None) -> None:
    """A ``uses: agent`` step: ``with.instruction`` (required), ``with.tools`` and ``with.model``."""
    args = step.get("with")
    if not isinstance(args, dict) or "instruction" not in args:
        problem(where + (("with",) if isinstance(args, dict) else ("uses",)),
                "an agent step needs with.instruction, what the agent should do", code="bad-agent-step",
                suggestion="with: {instruction: \"Reconcile the ledger with the bank statement\"}")
        return
    instruction = args["instruction"]
    if not isinstance(instruction, str) or not instruction.strip():
        got = "empty text" if isinstance(instruction, str) else type(instruction).__name__
        problem(where + ("with", "instruction"), f"with.instruction of an agent step must be non-empty text, "
                f"got {got}", code="bad-agent-step")
    else:
        _no_secret_in_prompt(problem, where + ("with", "instruction"), instruction, inputs)
    for key in args:
        if key not in AGENT_STEP_FIELDS:
            problem(where + ("with", key), f"an agent step takes {_and(AGENT_STEP_FIELDS)} under with:, "
                    f"not {key!r}", code="unknown-field", suggestion=did_you_mean(key, AGENT_STEP_FIELDS))
    check_tool_names(problem, where + ("with", "tools"), args.get("tools"), sources)
    if "model" in args and not (isinstance(args["model"], str) and "${{" in args["model"]):
        check_model(problem, where + ("with", "model"), args["model"], models)


def _no_secret_in_prompt(problem: Reporter, path: tuple, text: str, inputs: dict) -> None:
    """An instruction is sent to the model's provider and kept in the run's record: no secrets in it."""
    for source in find_references(text):
        try:
            refs = compile_expression(source).references
        except ExpressionError:
            continue  # reported by the expression checks
        for ref in refs:
            spec = inputs.get(ref.name) if ref.root == "inputs" and ref.name else None
            if isinstance(spec, dict) and spec.get("secret") is True:
                problem(path, f"the instruction reads secret input {ref.name!r}, but an instruction is sent to "
                        "the model's provider as it is", code="secret-in-prompt",
                        suggestion="give the secret to the tool that needs it (a data source's env or headers), "
                        "not to the model")


def _and(words: tuple[str, ...]) -> str:
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []
