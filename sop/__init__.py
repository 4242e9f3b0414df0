"""The SOP model: schema, loading, validation, graph, safe expressions and reports.

Pure Python: importing ``sop`` never imports Ray. The names below are imported
on first use, so ``from sop.errors import SopflowError`` (which every Ray worker
running a step does) does not pay for pydantic, jinja2 and PyYAML.
"""

from __future__ import annotations

from sop._lazy import lazy_exports

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sop.errors import ModeError, Problem, SopflowError, SopValidationError
    from sop.expressions import Expression, ExpressionError, compile_expression, render
    from sop.graph import CriticalPath, Graph, GraphError
    from sop.model import (
        AgentSpec,
        DataSource,
        InputSpec,
        Mode,
        OnFailure,
        Resources,
        RetryPolicy,
        Sop,
        Step,
        StepDefaults,
        TriggerRule,
    )
    from sop._added_steps import check_new_steps
    from sop.modes import change_mode, choose_mode
    from sop.validate import (
        HandlerCatalog,
        ValidationReport,
        check_file,
        check_text,
        load,
        loads,
    )

_LAZY = {
    "ModeError": "sop.errors",
    "Problem": "sop.errors",
    "SopflowError": "sop.errors",
    "SopValidationError": "sop.errors",
    "Expression": "sop.expressions",
    "ExpressionError": "sop.expressions",
    "compile_expression": "sop.expressions",
    "render": "sop.expressions",
    "CriticalPath": "sop.graph",
    "Graph": "sop.graph",
    "GraphError": "sop.graph",
    "AgentSpec": "sop.model",
    "DataSource": "sop.model",
    "InputSpec": "sop.model",
    "Mode": "sop.model",
    "OnFailure": "sop.model",
    "Resources": "sop.model",
    "RetryPolicy": "sop.model",
    "Sop": "sop.model",
    "Step": "sop.model",
    "StepDefaults": "sop.model",
    "TriggerRule": "sop.model",
    "HandlerCatalog": "sop.validate",
    "ValidationReport": "sop.validate",
    "check_file": "sop.validate",
    "check_new_steps": "sop._added_steps",
    "check_text": "sop.validate",
    "change_mode": "sop.modes",
    "choose_mode": "sop.modes",
    "load": "sop.validate",
    "loads": "sop.validate",
}

__all__ = [
    # errors
    "SopflowError",
    "SopValidationError",
    "Problem",
    "ExpressionError",
    "GraphError",
    "ModeError",
    # model
    "Sop",
    "Step",
    "StepDefaults",
    "RetryPolicy",
    "Resources",
    "InputSpec",
    "DataSource",
    "AgentSpec",
    "Mode",
    "TriggerRule",
    "OnFailure",
    # loading and validation
    "load",
    "loads",
    "check_file",
    "check_text",
    "check_new_steps",
    "choose_mode",
    "change_mode",
    "ValidationReport",
    "HandlerCatalog",
    # graph and expressions
    "Graph",
    "CriticalPath",
    "Expression",
    "compile_expression",
    "render",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
