"""The SOP model: schema, loading, validation, graph, safe expressions and reports.

Pure Python: importing ``sop`` never imports Ray.
"""

from sop.errors import Problem, SopflowError, SopValidationError
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
from sop.validate import (
    HandlerCatalog,
    ValidationReport,
    check_file,
    check_new_steps,
    check_text,
    choose_mode,
    load,
    loads,
)

__all__ = [
    # errors
    "SopflowError",
    "SopValidationError",
    "Problem",
    "ExpressionError",
    "GraphError",
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
    "ValidationReport",
    "HandlerCatalog",
    # graph and expressions
    "Graph",
    "CriticalPath",
    "Expression",
    "compile_expression",
    "render",
]
