"""A ``python:`` module importable where the client runs but not on the workers is refused at submit."""

from __future__ import annotations

import sys
import uuid

import pytest

from runtime.errors import SubmissionError
from tests.sop_builders import H, sop_text

pytestmark = pytest.mark.ray


def test_a_module_missing_on_the_workers_is_refused_at_submit(engine, sop_file, tmp_path) -> None:
    module = f"driver_only_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text("def hello():\n    return 'hi'\n")
    sys.path.insert(0, str(tmp_path))  # the driver has it; the workers' PYTHONPATH does not
    try:
        path = sop_file(sop_text(f"""\
            steps:
              - id: fine
                uses: {H}:echo
              - id: greet
                uses: python:{module}:hello
            """, name="preflight"))
        before = {v.id for v in engine.list(sop="preflight", limit=100_000)}
        with pytest.raises(SubmissionError) as info:
            engine.submit(path)
        text = str(info.value)
        assert "'greet'" in text and repr(module) in text and "workers" in text and "runtime_env" in text
        with pytest.raises(SubmissionError, match=module):
            engine.submit_many(path, [{}, {}])
        assert {v.id for v in engine.list(sop="preflight", limit=100_000)} == before  # nothing submitted
    finally:
        sys.path.remove(str(tmp_path))
