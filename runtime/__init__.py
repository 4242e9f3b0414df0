"""The sopflow engine core and public API.

``runtime`` stays importable without Ray: the Ray-backed names (``Engine`` and
friends) are imported on first use, so ``sopflow validate`` answers in a blink.
"""

from __future__ import annotations

from sop._lazy import lazy_exports

from runtime.registry import Registration, Registry, RegistryError

_LAZY = {
    "Engine": "runtime.engine",
    "ExecutionId": "runtime.ids",
    "ExecutionStatus": "runtime.status",
    "StepStatus": "runtime.status",
    "ExecutionView": "runtime.status",
    "ExecutionError": "runtime.errors",
    "ExecutionNotFound": "runtime.errors",
    "ExecutionTimeout": "runtime.errors",
    "RetryableError": "runtime.errors",
    "PermanentError": "runtime.errors",
    "StepContext": "runtime.handlers",
    "Hook": "runtime.hooks",
    "SubmissionError": "runtime.errors",
    "IdempotencyConflict": "runtime.errors",
    "ExecutionFailed": "runtime.errors",
    "EngineUnavailable": "runtime.errors",
    "EngineStartError": "runtime.errors",
    "StateStoreError": "runtime.errors",
    "StateStoreInUseError": "runtime.errors",
    "StateStoreLostError": "runtime.errors",
    "ScheduleError": "runtime.errors",
    "BatchNotFound": "runtime.errors",
    "ResourceRequestError": "runtime.errors",
    "TriggerError": "runtime.errors",
    "TriggerNotFound": "runtime.errors",
    "TriggerPayloadTooLarge": "runtime.errors",
}

__all__ = [
    # engine and executions
    "Engine",
    "ExecutionId",
    "ExecutionStatus",
    "StepStatus",
    "ExecutionView",
    # handlers
    "Registry",
    "Registration",
    "StepContext",
    "Hook",
    # errors
    "RegistryError",
    "ExecutionError",
    "ExecutionNotFound",
    "ExecutionTimeout",
    "RetryableError",
    "PermanentError",
    "SubmissionError",
    "IdempotencyConflict",
    "ExecutionFailed",
    "EngineUnavailable",
    "EngineStartError",
    "StateStoreError",
    "StateStoreInUseError",
    "StateStoreLostError",
    "ScheduleError",
    "BatchNotFound",
    "ResourceRequestError",
    "TriggerError",
    "TriggerNotFound",
    "TriggerPayloadTooLarge",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
