"""The registry of step handlers, models and hooks, including entry-point discovery."""

from __future__ import annotations

import importlib
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.registry import ENTRY_POINT_GROUPS, Registration, Registry, RegistryError, import_object
from sop import check_text


def greet(name: str) -> str:
    """Say hello."""
    return f"hello, {name}"


async def fetch_rows(account: str) -> list:
    """Fetch the ledger rows."""
    return [account]


# -- registering and looking up --------------------------------------------------------------


def test_a_registered_handler_is_found_by_name() -> None:
    reg = Registry(discover=False)
    entry = reg.register("handler", "greet", {"description": "Say hello."}, greet)
    assert reg.lookup("handler", "greet") is entry
    assert entry.load() is greet
    assert entry.definition == {"description": "Say hello."}
    assert reg.names("handler") == ["greet"]
    assert reg.has_handler("greet") and not reg.has_handler("shout")


def test_the_decorator_registers_a_sync_function_under_its_dashed_name() -> None:
    reg = Registry(discover=False)

    @reg.handler()
    def send_email(to: str) -> None:
        """Send an email to someone."""

    entry = reg.lookup("handler", "send-email")
    assert entry.load() is send_email
    assert entry.definition["description"] == "Send an email to someone."
    assert entry.definition["is_async"] is False


def test_the_decorator_registers_an_async_function_and_keeps_the_function() -> None:
    reg = Registry(discover=False)
    returned = reg.handler("rows", idempotent=False)(fetch_rows)
    assert returned is fetch_rows
    entry = reg.lookup("handler", "rows")
    assert entry.definition == {"idempotent": False, "description": "Fetch the ledger rows.",
                                "is_async": True}


def test_a_handler_can_be_registered_as_an_import_reference() -> None:
    reg = Registry(discover=False)
    reg.register("handler", "greet", implementation="examples.handlers:greet")
    from examples.handlers import greet as example_greet

    assert reg.lookup("handler", "greet").load() is example_greet


def test_kinds_are_separate() -> None:
    reg = Registry(discover=False)
    reg.register("model", "offline", implementation=greet)
    assert reg.names("handler") == []
    assert reg.lookup("model", "offline").kind == "model"
    with pytest.raises(RegistryError):
        reg.lookup("handler", "offline")


def test_registering_a_name_twice_is_an_error_unless_replaced() -> None:
    reg = Registry(discover=False)
    reg.register("handler", "greet", implementation=greet)
    with pytest.raises(RegistryError) as info:
        reg.register("handler", "greet", implementation=fetch_rows)
    assert str(info.value) == "handler 'greet' is already registered; pass replace=True to override"
    assert reg.lookup("handler", "greet").load() is greet
    reg.register("handler", "greet", implementation=fetch_rows, replace=True)
    assert reg.lookup("handler", "greet").load() is fetch_rows


def test_the_decorator_refuses_a_name_that_is_taken() -> None:
    reg = Registry(discover=False)
    reg.handler("greet")(greet)
    with pytest.raises(RegistryError):
        reg.handler("greet")(fetch_rows)


@pytest.mark.parametrize("kind, name, impl, words", [
    ("widget", "x", greet, "unknown registry kind 'widget'; kinds are handler, model, hook"),
    ("handler", "", greet, "non-empty text without ':'"),
    ("handler", "python:x", greet, "non-empty text without ':'"),
    ("handler", "x", None, "needs a callable or 'module:attr' implementation"),
    ("handler", "x", 42, "needs a callable or 'module:attr' implementation"),
])
def test_malformed_registrations_are_refused(kind: str, name: str, impl: object, words: str) -> None:
    with pytest.raises(RegistryError) as info:
        Registry(discover=False).register(kind, name, implementation=impl)
    assert words in str(info.value)


def test_a_missing_handler_names_the_close_ones() -> None:
    reg = Registry(discover=False)
    for name in ("send-email", "send-sms", "greet"):
        reg.register("handler", name, implementation=greet)
    with pytest.raises(RegistryError) as info:
        reg.lookup("handler", "send-emial")
    assert str(info.value).startswith("no handler is registered as 'send-emial'; did you mean 'send-email'")


def test_a_missing_handler_with_nothing_close_lists_what_is_registered() -> None:
    reg = Registry(discover=False)
    reg.register("handler", "greet", implementation=greet)
    reg.register("handler", "shout", implementation=greet)
    with pytest.raises(RegistryError) as info:
        reg.lookup("handler", "reconcile")
    assert str(info.value) == "no handler is registered as 'reconcile'; registered handlers: greet, shout"


def test_a_missing_handler_in_an_empty_registry_says_so() -> None:
    with pytest.raises(RegistryError) as info:
        Registry(discover=False).lookup("hook", "audit")
    assert str(info.value) == "no hook is registered as 'audit'; no hooks are registered"


def test_looking_up_an_unknown_kind_is_an_error() -> None:
    with pytest.raises(RegistryError) as info:
        Registry(discover=False).lookup("widget", "x")
    assert "unknown registry kind 'widget'" in str(info.value)


def test_import_object_reports_what_cannot_be_imported() -> None:
    assert import_object("examples.handlers:greet").__name__ == "greet"
    assert import_object("os.path:join.__name__") == "join"
    with pytest.raises(RegistryError) as info:
        import_object("examples.handlers:nope")
    assert "cannot import 'examples.handlers:nope'" in str(info.value)
    with pytest.raises(RegistryError):
        import_object("no_such_module_for_sopflow:x")


def test_the_registry_is_a_handler_catalog_for_validation() -> None:
    reg = Registry(discover=False)
    reg.handler()(greet)
    assert check_text("sop: x\nsteps:\n  - {id: a, uses: greet}\n", handlers=reg).ok
    report = check_text("sop: x\nsteps:\n  - {id: a, uses: gret}\n", handlers=reg)
    [problem] = report.problems
    assert problem.suggestion == "did you mean 'greet' or 'agent'?"  # registered first, then built-in


def test_the_registry_is_a_model_catalog_for_validation() -> None:
    reg = Registry(discover=False)
    reg.register("model", "house-llm", implementation=greet)
    sop = "sop: x\nagent: {{model: {model}}}\nsteps:\n  - {{id: a, run: echo}}\n"
    assert check_text(sop.format(model="house-llm"), handlers=reg).ok
    [problem] = check_text(sop.format(model="house-lm"), handlers=reg).problems
    assert (problem.code, problem.message) == ("unknown-model", "no model is registered as 'house-lm'")
    assert problem.suggestion == "did you mean 'house-llm'?"


# -- Registration.reference ------------------------------------------------------------------


def test_a_module_level_function_has_an_import_reference() -> None:
    entry = Registration("handler", "greet", {}, greet)
    assert entry.reference == f"{__name__}:greet"
    assert import_object(entry.reference) is greet


def test_a_string_implementation_is_its_own_reference() -> None:
    assert Registration("handler", "g", {}, "examples.handlers:greet").reference == "examples.handlers:greet"


def test_a_lambda_or_local_function_has_no_reference() -> None:
    def local(x: int) -> int:
        return x

    assert Registration("handler", "l", {}, lambda x: x).reference is None
    assert Registration("handler", "l", {}, local).reference is None


def test_a_method_reference_uses_its_qualified_name() -> None:
    entry = Registration("handler", "join", {}, Registry.names)
    assert entry.reference == "runtime.registry:Registry.names"
    assert import_object(entry.reference) is Registry.names


# -- entry points ----------------------------------------------------------------------------


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A tiny installed distribution declaring a handler and a hook through entry points."""
    module = "sopflow_test_plugin_handlers"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent("""\
        def stamp(text):
            return "stamped: " + text

        def audit(event):
            return event
    """))
    dist = tmp_path / "sopflow_test_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sopflow-test-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUPS['handler']}]\nstamp = {module}:stamp\n"
        f"greet = {module}:stamp\n\n"
        f"[{ENTRY_POINT_GROUPS['hook']}]\naudit = {module}:audit\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield module
    importlib.invalidate_caches()


def test_entry_point_handlers_are_discovered_and_load_lazily(plugin: str) -> None:
    reg = Registry()
    entry = reg.lookup("handler", "stamp")
    assert entry.implementation == f"{plugin}:stamp"
    assert entry.reference == f"{plugin}:stamp"
    assert entry.definition == {"source": f"{plugin}:stamp"}
    assert entry.load()("x") == "stamped: x"
    assert "stamp" in reg.names("handler")
    assert reg.has_handler("stamp")


def test_entry_points_are_discovered_per_kind(plugin: str) -> None:
    reg = Registry()
    assert reg.lookup("hook", "audit").load()("e") == "e"
    assert "audit" not in reg.names("handler")


def test_code_registrations_win_over_entry_points(plugin: str) -> None:
    reg = Registry()
    reg.register("handler", "greet", implementation=greet)
    assert reg.lookup("handler", "greet").load() is greet
    assert reg.lookup("handler", "stamp").implementation == f"{plugin}:stamp"


def test_discovery_can_be_turned_off(plugin: str) -> None:
    reg = Registry(discover=False)
    assert not reg.has_handler("stamp")
    assert "stamp" not in reg.names("handler")


def test_validation_accepts_a_handler_from_an_entry_point(plugin: str) -> None:
    report = check_text("sop: x\nsteps:\n  - {id: a, uses: stamp}\n  - {id: b, uses: stmp}\n",
                        handlers=Registry())
    [problem] = report.problems
    assert problem.path == "steps[1].uses"
    assert problem.suggestion is not None and "'stamp'" in problem.suggestion
