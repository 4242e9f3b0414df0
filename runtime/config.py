"""Settings of the sopflow actors on a cluster: where state lives and how long it is kept."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from pathlib import Path

from runtime.outputs import DEFAULT_INLINE_OUTPUT_BYTES

DAY_S = 86_400.0
RESTART_GRACE_S = 60.0
"""How long a client keeps resending a request while Ray restarts a crashed coordinator."""

DEFAULT_STATE_PATH = str(Path("~/.sopflow/state.db").expanduser())
"""Where the state store lives (on the head node) unless ``$SOPFLOW_STATE`` says otherwise."""


def default_state_path() -> str:
    """``$SOPFLOW_STATE`` if set (a path or URL for ``open_log``), else :data:`DEFAULT_STATE_PATH`."""
    return os.environ.get("SOPFLOW_STATE") or DEFAULT_STATE_PATH


PRIORITY_CLASSES = ("critical", "high", "normal", "low")
"""Priority classes, most urgent first; an execution is ``normal`` unless it says otherwise."""


def check_model_rate_limits(limits: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """``limits`` as ``{provider: (requests/min, tokens/min)}``; 0 means no limit on that count.

    Raises:
        ValueError: a provider name is empty or a limit is not a whole number >= 0.
    """
    if not isinstance(limits, Mapping):
        raise ValueError(f"model_rate_limits must map a provider to (requests/min, tokens/min), got {limits!r}")
    checked: dict[str, tuple[int, int]] = {}
    for provider, pair in limits.items():
        if not isinstance(provider, str) or not provider.strip():
            raise ValueError(f"model_rate_limits: a provider name must be non-empty text, got {provider!r}")
        ok = isinstance(pair, tuple | list) and len(pair) == 2 and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in pair)
        if not ok:
            raise ValueError(f"model_rate_limits[{provider!r}] must be (requests/min, tokens/min), whole numbers "
                             f">= 0 (0: no limit), got {pair!r}")
        checked[provider] = (pair[0], pair[1])
    return checked


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How the coordinator keeps its event log and state store.

    Attributes:
        state: The event log: a SQLite file path (created on first use, on the
            head node) or ``"memory://"`` for a log that dies with the coordinator.
            Empty (the default) means the head node's own default, resolved where the
            actors run: ``$SOPFLOW_STATE`` in the head's environment, else
            ``~/.sopflow/state.db`` in the home directory of the user running Ray
            there, never the connecting client's.
        synchronous: SQLite's ``synchronous`` setting. ``NORMAL`` survives a crashed
            process or cluster; ``FULL`` also survives a power cut, at a cost per commit.
        retention_days: Finished executions older than this are removed from the store.
        snapshot_every: Write a state snapshot after this many events of one execution,
            so recovering or reading a long history folds only the tail.
        keep_finished: Finished executions the actors keep in memory for fast queries;
            older ones are answered from the store.
        max_running_steps: Step tasks the coordinator keeps in Ray at once; more wait in
            its queue, highest execution priority first. 0 means 8 per CPU of the cluster
            (at least 16). Raise it for steps that mostly wait (I/O) with a small ``cpu``.
        max_inline_output_bytes: A step output (or SOP output) whose JSON text is larger than
            this is stored once as an artifact beside its events, which hold a small
            ``{"$artifact": sha256, "size", "preview"}`` descriptor instead; expressions and
            ``Engine.result`` still see the value. Must be >= 1024.
        lease_ttl_s: One engine owns a state file at a time. It renews its lease every
            third of this; another engine may take the file over only after this many
            seconds without a renewal (the owner crashed), or at once after a clean
            shutdown or when the owner's process on the same host is gone.
        api_host: Where the HTTP API (used by the CLI) listens on the head node. Empty
            (the default): ``$SOPFLOW_API_HOST`` in the head's environment, else
            ``127.0.0.1``; reach it from elsewhere with ``ssh -L`` rather than binding
            ``0.0.0.0``.
        api_port: Its TCP port; 0 picks a free one (written to the discovery file
            ``~/.sopflow/api-<namespace>.json`` on the head). None (the default):
            ``$SOPFLOW_API_PORT`` in the head's environment, else 0.
        max_package_mb: The largest ``working_dir``/``py_modules`` package (as Ray zipped it) a
            client may send with its submissions. The coordinator keeps one copy of each in the
            state store, so that steps still find the code after the client's job ended (Ray
            deletes it then) or the cluster restarted; a bigger one refuses the submission.
        checkpoint_every_s: How often the coordinator moves the SQLite WAL into the main
            file and truncates it (also done on a clean shutdown), so the main file alone
            holds nearly everything and a damaged WAL can cost little.
        priority_weights: The share of run slots each priority class gets while several
            wait (weighted fair share): with the defaults, waiting ``critical`` work gets 8
            slots for every 4 of ``high``, 2 of ``normal`` and 1 of ``low`` — ``low`` is
            slowed, never starved. Every class needs a whole-number weight >= 1.
        expected_duration_s: How long an execution is expected to run when its SOP declares
            no ``expected_duration_s``; 0 (the default): no expectation, so no ``overdue``
            alert for such SOPs. See :mod:`runtime.alerts`.
        alert_overdue_factor: An execution running longer than this times its expected
            duration raises an ``overdue`` alert (event, status flag, metric, ``on_alert``
            hooks). Must be >= 1.
        alert_queued_s: A step waiting for a run slot longer than this raises a
            ``queued_too_long`` alert; 0 turns the rule off.
        alert_decision_s: A step waiting for an operator's decision longer than this raises
            a ``needs_decision_too_long`` alert; 0 turns the rule off.
        alert_check_every_s: How often the coordinator checks the alert rules.
        metrics_sop_labels: Distinct SOP names exported as Prometheus label values; metrics
            of further SOPs are exported under ``sop="other"`` (bounds the series count).
        log_retention_days: Audit log entries (``Engine.logs``) older than this are removed
            (hourly, with the purge of old executions); an execution's entries also go when
            the execution itself is removed (``retention_days``), whichever comes first.
        agent_hosts: How many agent host actors run the sessions of Agent Centric Runs (each
            holds many sessions as asyncio tasks, and one MCP client pool).
        agent_heartbeat_s: An agent session reports its status at least this often.
        agent_silence_s: A session not heard from for this long is taken as lost and started
            again from its recording (it must exceed ``agent_heartbeat_s``).
        agent_restarts: How many times a lost session is started again before its execution
            fails.
        agent_trace_content: Put model prompts and answers into the agent's trace spans (off by
            default: they may hold business data; ``ADK_CAPTURE_MESSAGE_CONTENT_IN_SPANS`` set in
            the hosts' environment wins).
        model_rate_limits: Per model provider (``openai``, ``anthropic``, ``gemini``, a
            registered model's name ...), ``(requests per minute, tokens per minute)`` for
            agent model calls, shared by every agent host of the namespace; 0 means no limit
            on that count. Give a dict; it is kept as sorted ``(provider, (rpm, tpm))`` pairs
            (see :attr:`model_rate_limit_map`). Empty (the default): no limits, though a 429
            answer still makes every caller of that provider back off.
        autoscale: Ask Ray's autoscaler for capacity (``ray.autoscaler.sdk.request_resources``)
            when steps wait for it or utilisation stays high, and withdraw the request when it
            stays low, so idle nodes can go (see :mod:`runtime.scaling`). Off by default: turn it on
            for a cluster started with an autoscaler (``ray up``, KubeRay). While on, sopflow owns
            the cluster's standing ``request_resources`` (each request replaces the previous one).
        scale_up_utilisation: Above this share of the busiest resource (CPU, memory or GPU in use),
            sustained for ``scale_up_after_s``, ask for more. From 0 to 1, above
            ``scale_down_utilisation``; the band between them is where nothing changes.
        scale_down_utilisation: Below this share, with no step waiting for capacity, for more than
            ``scale_down_after_s``, withdraw the request.
        scale_up_after_s: How long steps must wait for capacity, or utilisation stay high, before
            more is asked for (a burst shorter than this is absorbed by the queue).
        scale_down_after_s: How long utilisation must stay low before the request is withdrawn.
        scale_check_every_s: How often utilisation and the waiting steps are read (off the
            coordinator's hot path: one call per period).
        resource_manager: Place steps by their resources (best fit over the nodes' free CPU,
            memory, GPU and capabilities) on capacity leased from the ResourceManager, and refuse
            at submit a step no node can run. Off: steps are admitted by run slots alone and Ray
            places them (the overhead benchmark compares the two).
        resource_lease_ttl_s: How long the coordinator's lease on capacity lasts unless renewed
            (it renews every third of it); a dead coordinator's lease is reclaimed after it.
    """

    state: str = ""
    synchronous: str = "NORMAL"
    retention_days: float = 90.0
    snapshot_every: int = 1000
    keep_finished: int = 10_000
    max_running_steps: int = 0
    max_inline_output_bytes: int = DEFAULT_INLINE_OUTPUT_BYTES
    lease_ttl_s: float = 15.0
    checkpoint_every_s: float = 300.0
    api_host: str = ""
    api_port: int | None = None
    priority_weights: tuple[tuple[str, int], ...] = (("critical", 8), ("high", 4), ("normal", 2), ("low", 1))
    expected_duration_s: float = 0.0
    alert_overdue_factor: float = 2.0
    alert_queued_s: float = 1800.0
    alert_decision_s: float = 3600.0
    alert_check_every_s: float = 5.0
    metrics_sop_labels: int = 50
    log_retention_days: float = 90.0
    max_package_mb: int = 256
    agent_hosts: int = 2
    agent_heartbeat_s: float = 30.0
    agent_silence_s: float = 90.0
    agent_restarts: int = 3
    agent_trace_content: bool = False
    model_rate_limits: tuple[tuple[str, tuple[int, int]], ...] = ()
    # -- triggers (runtime.triggers) --
    trigger_payload_max_bytes: int = 65_536
    """The largest event payload ``emit`` takes (its JSON text, in bytes); a bigger one is refused."""
    trigger_catch_up_max: int = 100
    """The most missed fires one cron trigger with ``catch_up: all`` starts after downtime (the latest)."""
    trigger_max_waiting: int = 1000
    """The most fires one trigger keeps waiting for a run slot (``max_concurrent``); an emit beyond it is
    refused, so a flood of events cannot grow the trigger's record without bound."""
    trigger_grace_s: float = 60.0
    """A cron fire this late still counts as on time (``catch_up: skip`` starts it): a short restart
    of the trigger actor loses no fire."""
    # -- autoscaling (runtime.scaling, actors/scaler.py) --
    autoscale: bool = False
    scale_up_utilisation: float = 0.8
    scale_down_utilisation: float = 0.3
    scale_up_after_s: float = 30.0
    scale_down_after_s: float = 300.0
    scale_check_every_s: float = 10.0
    resource_manager: bool = True
    resource_lease_ttl_s: float = 30.0

    def __post_init__(self) -> None:
        if self.state and self.durable:  # the actors run elsewhere: a relative path would land in their directory
            path = self.state.removeprefix("sqlite://")
            object.__setattr__(self, "state", os.path.abspath(os.path.expanduser(path)))
        if not (isinstance(self.resource_lease_ttl_s, (int, float)) and 1.0 <= self.resource_lease_ttl_s <= 3600):
            raise ValueError(f"resource_lease_ttl_s must be from 1 to 3600 seconds, got {self.resource_lease_ttl_s!r}")
        if self.synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {self.synchronous!r}")
        if self.retention_days <= 0:
            raise ValueError(f"retention_days must be > 0, got {self.retention_days}")
        if not self.log_retention_days > 0:
            raise ValueError(f"log_retention_days must be > 0, got {self.log_retention_days}")
        if self.snapshot_every < 10:
            raise ValueError(f"snapshot_every must be >= 10, got {self.snapshot_every}")
        if self.max_running_steps < 0:
            raise ValueError(f"max_running_steps must be >= 0 (0: automatic), got {self.max_running_steps}")
        if self.max_inline_output_bytes < 1024:
            raise ValueError(f"max_inline_output_bytes must be >= 1024, got {self.max_inline_output_bytes}")
        if not self.checkpoint_every_s > 0:
            raise ValueError(f"checkpoint_every_s must be > 0, got {self.checkpoint_every_s}")
        if not self.lease_ttl_s > 0:
            raise ValueError(f"lease_ttl_s must be > 0, got {self.lease_ttl_s}")
        if self.keep_finished < 0:
            raise ValueError(f"keep_finished must be >= 0, got {self.keep_finished}")
        if not (isinstance(self.max_package_mb, int) and self.max_package_mb >= 1):
            raise ValueError(f"max_package_mb must be an integer >= 1, got {self.max_package_mb!r}")
        if not (isinstance(self.agent_hosts, int) and 1 <= self.agent_hosts <= 64):
            raise ValueError(f"agent_hosts must be an integer from 1 to 64, got {self.agent_hosts!r}")
        if not (isinstance(self.agent_restarts, int) and self.agent_restarts >= 0):
            raise ValueError(f"agent_restarts must be an integer >= 0, got {self.agent_restarts!r}")
        if not 0 < self.agent_heartbeat_s < self.agent_silence_s < float("inf"):
            raise ValueError(f"agent_heartbeat_s ({self.agent_heartbeat_s}) must be > 0 and below "
                             f"agent_silence_s ({self.agent_silence_s})")
        if self.api_port is not None and not (isinstance(self.api_port, int) and 0 <= self.api_port <= 65535):
            raise ValueError(f"api_port must be 0 (any free port) to 65535, got {self.api_port!r}")
        for name in ("expected_duration_s", "alert_queued_s", "alert_decision_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a number of seconds >= 0 (0: off), got {value!r}")
        if isinstance(self.alert_overdue_factor, bool) or not isinstance(self.alert_overdue_factor, int | float) \
                or not 1 <= self.alert_overdue_factor < float("inf"):
            raise ValueError(f"alert_overdue_factor must be a number >= 1, got {self.alert_overdue_factor!r}")
        if isinstance(self.alert_check_every_s, bool) or not isinstance(self.alert_check_every_s, int | float) \
                or not 0 < self.alert_check_every_s < float("inf"):
            raise ValueError(f"alert_check_every_s must be a number of seconds > 0, got {self.alert_check_every_s!r}")
        if isinstance(self.metrics_sop_labels, bool) or not isinstance(self.metrics_sop_labels, int) \
                or self.metrics_sop_labels < 1:
            raise ValueError(f"metrics_sop_labels must be an integer >= 1, got {self.metrics_sop_labels!r}")
        if not isinstance(self.api_host, str) or any(c.isspace() for c in self.api_host):
            raise ValueError(f"api_host must be a host name or IP address, got {self.api_host!r}")
        weights = dict(self.priority_weights.items() if isinstance(self.priority_weights, dict)
                       else self.priority_weights)
        if sorted(weights) != sorted(PRIORITY_CLASSES) or not all(
                isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in weights.values()):
            raise ValueError(f"priority_weights must give each of {', '.join(PRIORITY_CLASSES)} a whole-number "
                             f"weight >= 1, got {weights!r}")
        object.__setattr__(self, "priority_weights", tuple((c, weights[c]) for c in PRIORITY_CLASSES))
        self._check_scaling()
        limits = self.model_rate_limits
        try:
            limits = dict(limits.items() if isinstance(limits, dict) else limits)
        except (TypeError, ValueError):
            raise ValueError("model_rate_limits must map a provider to (requests/min, tokens/min), "
                             f"got {self.model_rate_limits!r}") from None
        object.__setattr__(self, "model_rate_limits", tuple(sorted(check_model_rate_limits(limits).items())))
        for name, low, high in (("trigger_payload_max_bytes", 1024, 2**30), ("trigger_catch_up_max", 1, 100_000),
                                ("trigger_max_waiting", 1, 1_000_000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")
        if isinstance(self.trigger_grace_s, bool) or not isinstance(self.trigger_grace_s, int | float) \
                or not 0 <= self.trigger_grace_s < float("inf"):
            raise ValueError(f"trigger_grace_s must be a number of seconds >= 0, got {self.trigger_grace_s!r}")

    def _check_scaling(self) -> None:
        """The autoscaling fields (see :mod:`runtime.scaling`)."""
        if not isinstance(self.autoscale, bool):
            raise ValueError(f"autoscale must be true or false, got {self.autoscale!r}")
        for name in ("scale_up_utilisation", "scale_down_utilisation"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
                raise ValueError(f"{name} must be a share above 0 and at most 1 (0.8 is 80%), got {value!r}")
        if not self.scale_down_utilisation < self.scale_up_utilisation:
            raise ValueError(f"scale_down_utilisation ({self.scale_down_utilisation}) must be below "
                             f"scale_up_utilisation ({self.scale_up_utilisation}), or scaling would flap")
        for name in ("scale_up_after_s", "scale_down_after_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        value = self.scale_check_every_s
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
            raise ValueError(f"scale_check_every_s must be a number of seconds > 0, got {value!r}")

    def on_this_node(self) -> EngineConfig:
        """This config with an empty ``state`` resolved in the calling process (an actor on the head)."""
        return self if self.state else dataclasses.replace(self, state=default_state_path())

    def api_address(self) -> tuple[str, int]:
        """``(host, port)`` the API listens on, resolved in the calling process (the API actor)."""
        host = self.api_host or os.environ.get("SOPFLOW_API_HOST", "").strip() or "127.0.0.1"
        if self.api_port is not None:
            return host, self.api_port
        raw = os.environ.get("SOPFLOW_API_PORT", "").strip() or "0"
        try:
            port = int(raw)
        except ValueError:
            raise ValueError(f"$SOPFLOW_API_PORT must be a port number (0: any free port), got {raw!r}") from None
        if not 0 <= port <= 65535:
            raise ValueError(f"$SOPFLOW_API_PORT must be 0 (any free port) to 65535, got {port}")
        return host, port

    @property
    def model_rate_limit_map(self) -> dict[str, tuple[int, int]]:
        """``model_rate_limits`` as ``{provider: (requests/min, tokens/min)}``."""
        return dict(self.model_rate_limits)

    @property
    def retention_s(self) -> float:
        return self.retention_days * DAY_S

    @property
    def log_retention_s(self) -> float:
        return self.log_retention_days * DAY_S

    @property
    def durable(self) -> bool:
        return not self.state.startswith(("memory:", ":memory:"))
