"""Building small test SOPs and reading their events, shared by the engine tests."""

from __future__ import annotations

import textwrap

H = "python:tests.handlers_for_tests"
DEFAULTS = """\
defaults:
  retry: {max_attempts: 3, initial_delay_s: 0.05, backoff: 2.0}
  timeout_s: 60
  resources: {cpu: 0.25}
"""


def sop_text(body: str, name: str = "t", inputs: str = "", version: str = "1") -> str:
    """An SOP with the test defaults (steps run in parallel on the 4 logical CPUs)."""
    return f"sop: {name}\nversion: \"{version}\"\n{textwrap.dedent(inputs)}{DEFAULTS}{textwrap.dedent(body)}"


def events_of(engine, execution_id: str) -> list:
    return list(engine.events(execution_id, follow=False))
