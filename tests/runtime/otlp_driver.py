"""A local cluster whose processes export traces by OTLP/HTTP, for the OTLP test (run as a script).

The environment (``OTEL_TRACES_EXPORTER=otlp``, ``OTEL_EXPORTER_OTLP_ENDPOINT``) is set by
the test, as a user would set it before starting the cluster. Prints the id of one finished
execution, then keeps the cluster up (so its span processors can export) until stdin closes.
"""

from __future__ import annotations

import logging
import sys

from runtime import Engine
from runtime.config import EngineConfig


def main(state: str) -> None:
    engine = Engine.local(num_cpus=2, dashboard=False, config=EngineConfig(state=state),
                          logging_level=logging.ERROR)
    try:
        eid = engine.submit("examples/hello-linear.yaml", {"name": "otlp"})
        view = engine.wait(eid, timeout=120)
        print(eid, view.status.value, flush=True)
        sys.stdin.read()  # until the test has the spans it waits for
    finally:
        engine.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
