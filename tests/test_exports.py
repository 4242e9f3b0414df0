"""The public API: the names ``sop`` and ``runtime`` export are pinned here.

Adding or removing a public name is a deliberate change: update the list below
in the same commit.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import runtime
import sop

ROOT = Path(__file__).resolve().parents[1]

SOP_NAMES = [
    "AgentSpec",
    "CriticalPath",
    "DataSource",
    "Expression",
    "ExpressionError",
    "Graph",
    "GraphError",
    "HandlerCatalog",
    "InputSpec",
    "Mode",
    "ModeError",
    "OnFailure",
    "Problem",
    "Resources",
    "RetryPolicy",
    "Sop",
    "SopValidationError",
    "SopflowError",
    "Step",
    "StepDefaults",
    "TriggerRule",
    "ValidationReport",
    "change_mode",
    "check_file",
    "check_new_steps",
    "check_text",
    "choose_mode",
    "compile_expression",
    "load",
    "loads",
    "render",
]

RUNTIME_NAMES = [
    "BatchNotFound",
    "Engine",
    "EngineStartError",
    "EngineUnavailable",
    "ExecutionError",
    "ExecutionFailed",
    "ExecutionId",
    "ExecutionNotFound",
    "ExecutionStatus",
    "ExecutionTimeout",
    "ExecutionView",
    "Hook",
    "IdempotencyConflict",
    "PermanentError",
    "Registration",
    "Registry",
    "RegistryError",
    "ResourceRequestError",
    "RetryableError",
    "ScheduleError",
    "StateStoreError",
    "StateStoreInUseError",
    "StateStoreLostError",
    "StepContext",
    "StepStatus",
    "SubmissionError",
    "TriggerError",
    "TriggerNotFound",
    "TriggerPayloadTooLarge",
]


def test_sop_exports_exactly_the_pinned_names() -> None:
    assert sorted(sop.__all__) == SOP_NAMES
    assert len(sop.__all__) == len(set(sop.__all__))


def test_runtime_exports_exactly_the_pinned_names() -> None:
    assert sorted(runtime.__all__) == RUNTIME_NAMES
    assert len(runtime.__all__) == len(set(runtime.__all__))


@pytest.mark.parametrize("name", SOP_NAMES)
def test_every_sop_name_is_importable(name: str) -> None:
    module = importlib.import_module("sop")
    assert getattr(module, name) is not None
    namespace: dict = {}
    exec(f"from sop import {name}", namespace)  # noqa: S102 - the import statement users write
    assert namespace[name] is getattr(sop, name)


def test_the_registry_names_are_importable_without_ray() -> None:
    from runtime import Registration, Registry, RegistryError

    assert Registry and Registration and issubclass(RegistryError, sop.SopflowError)


def test_every_sop_error_derives_from_the_root() -> None:
    for error in (sop.SopValidationError, sop.ExpressionError, sop.GraphError, sop.ModeError):
        assert issubclass(error, sop.SopflowError)


def test_importing_sop_does_not_import_ray() -> None:
    done = subprocess.run([sys.executable, "-c", "import sys, sop, runtime; print('ray' in sys.modules)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


AGENTS_NAMES = ["AgentContext", "AgentHost", "McpPool", "OfflineModel", "SessionRecorder", "build_agent",
                "build_model", "run_session"]


def test_agents_exports_exactly_the_pinned_names_and_each_imports() -> None:
    import agents

    assert sorted(agents.__all__) == AGENTS_NAMES
    for name in AGENTS_NAMES:
        namespace: dict = {}
        exec(f"from agents import {name}", namespace)  # noqa: S102 - the import statement users write
        assert namespace[name] is getattr(agents, name)


def test_importing_the_mcp_pool_does_not_import_adk() -> None:
    done = subprocess.run([sys.executable, "-c", "import sys, agents.mcp.pool; print('google.adk' in sys.modules)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
