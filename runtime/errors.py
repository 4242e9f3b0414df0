"""Errors of running SOPs; handlers raise RetryableError / PermanentError to steer retries."""

from __future__ import annotations

from sop.errors import SopflowError


class ExecutionError(SopflowError):
    """Raised when an execution cannot be submitted, found, controlled or did not complete."""


class SubmissionError(ExecutionError):
    """Raised when a submission is refused (bad inputs, unsupported mode, unknown handler)."""


class IdempotencyConflict(SubmissionError):
    """Raised when an idempotency key is reused for a request that differs from its first one."""

    def __init__(self, key: str, execution_id: str, differences: list[str]) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used for execution {execution_id} with a different "
            f"request ({'; '.join(differences)}); send the same request to get that execution back, "
            "or use a new key for a new execution")
        self.key = key
        self.execution_id = execution_id
        self.differences = differences

    def __reduce__(self) -> tuple:
        return (type(self), (self.key, self.execution_id, self.differences))


class TriggerError(SubmissionError):
    """Raised when a trigger operation is refused: an unknown trigger, a bad or oversized event payload."""


class TriggerNotFound(TriggerError):
    """Raised when no deployed trigger has the given name (HTTP 404 over the API)."""


class TriggerPayloadTooLarge(TriggerError):
    """Raised when an event's payload is larger than ``EngineConfig.trigger_payload_max_bytes`` (HTTP 413)."""


class ExecutionNotFound(ExecutionError):
    """Raised when no execution has the given id."""

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"no execution {execution_id!r}; `sopflow list` shows the known ones")
        self.execution_id = execution_id

    def __reduce__(self) -> tuple:  # survive pickling across Ray with the original arguments
        return (type(self), (self.execution_id,))


class ExecutionTimeout(ExecutionError):
    """Raised when ``wait`` gives up before the execution finished."""

    def __init__(self, execution_id: str, timeout: float, status: str) -> None:
        super().__init__(f"execution {execution_id} is still {status} after {timeout:g} s")
        self.execution_id = execution_id
        self.timeout = timeout
        self.status = status

    def __reduce__(self) -> tuple:
        return (type(self), (self.execution_id, self.timeout, self.status))


class ExecutionFailed(ExecutionError):
    """Raised by ``result`` when the execution ended without completing."""

    def __init__(self, execution_id: str, status: str, errors: dict[str, str]) -> None:
        detail = "; ".join(f"{k}: {v}" for k, v in errors.items()) or "no step error recorded"
        super().__init__(f"execution {execution_id} ended {status}: {detail}")
        self.execution_id = execution_id
        self.status = status
        self.errors = errors

    def __reduce__(self) -> tuple:
        return (type(self), (self.execution_id, self.status, self.errors))


class EngineUnavailable(ExecutionError):
    """Raised when the Ray cluster or sopflow's actors cannot be reached."""


class EngineStartError(EngineUnavailable):
    """Raised when sopflow's actors fail to start (e.g. the state file cannot be created)."""


class StateStoreError(SopflowError):
    """Raised when the event log or state store cannot be opened, read or written."""


class RetryableError(Exception):
    """Raise from a step handler for a failure worth retrying (a flaky dependency, a 503)."""


class PermanentError(Exception):
    """Raise from a step handler for a failure no retry can fix (bad input, 404)."""


class StateStoreInUseError(StateStoreError):
    """Raised when an engine starts on a state file another live engine owns."""


class StateStoreLostError(StateStoreError):
    """Raised on a commit of an engine whose state file was taken over by another engine."""


class OptionalDependencyMissing(SopflowError, ImportError):
    """Raised when a feature needs a package sopflow does not install by default (e.g. pandas)."""

    def __init__(self, feature: str, package: str) -> None:
        super().__init__(f"{feature} needs {package}, which is not installed; "
                         f"install it with `pip install {package}`")
        self.feature = feature
        self.package = package

    def __reduce__(self) -> tuple:  # rebuilt from its arguments, not its message
        return (type(self), (self.feature, self.package))


class MetricsQueryError(SopflowError, ValueError):
    """Raised when a metrics query's window, SOP or mode is not one sopflow understands."""


class ScheduleError(SubmissionError):
    """Raised when a submission's ``schedule`` (batch, not_before, deadline, window) is not valid."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"schedule.{field}: {message}")
        self.field = field
        self.detail = message

    def __reduce__(self) -> tuple:
        return (type(self), (self.field, self.detail))


class BatchNotFound(ExecutionError):
    """Raised when no execution was submitted in the named batch."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no batch {name!r}: no execution was submitted with schedule batch {name!r} "
                         "(or its executions were purged)")
        self.name = name

    def __reduce__(self) -> tuple:
        return (type(self), (self.name,))


class ResourceRequestError(SubmissionError):
    """Raised when a step asks for resources no node has and autoscaling cannot add, or for nonsense."""

    exit_code = 2
    """The CLI exits 2: the request was refused before it ran, not failed."""
