"""OpenTelemetry set-up, configured by the standard ``OTEL_*`` environment variables.

``OTEL_TRACES_EXPORTER`` picks the exporter: ``none`` (the default: tracing
costs nothing), ``console`` (JSON lines to stdout, or to the file named by
``SOPFLOW_TRACE_FILE``) or ``otlp`` (``OTEL_EXPORTER_OTLP_ENDPOINT``; needs
``opentelemetry-exporter-otlp``). Every sopflow process (driver, coordinator,
workers) calls :func:`setup_tracing` once; a provider someone else installed
first (a notebook, a test with an in-memory exporter) is left alone.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject

_lock = threading.Lock()
_configured = False
TRACER_NAME = "sopflow"


def setup_tracing(service_name: str = "sopflow") -> None:
    """Install a tracer provider for this process from ``OTEL_*`` settings (idempotent)."""
    global _configured
    with _lock:
        if _configured:
            return
        _configured = True
        exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
        if exporter_name in ("", "none"):
            return
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            return  # someone configured tracing already; use theirs
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)}))
        if exporter_name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            path = os.environ.get("SOPFLOW_TRACE_FILE")
            out = open(path, "a", buffering=1) if path else sys.stdout  # noqa: SIM115 - lives with the process
            exporter = ConsoleSpanExporter(out=out, formatter=_one_line)
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif exporter_name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError as e:
                raise RuntimeError("OTEL_TRACES_EXPORTER=otlp needs the package "
                                   "opentelemetry-exporter-otlp-proto-http") from e
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            raise RuntimeError(f"OTEL_TRACES_EXPORTER={exporter_name!r} is not supported; "
                               "use none, console or otlp")
        trace.set_tracer_provider(provider)


def _one_line(span: Any) -> str:
    return json.dumps(json.loads(span.to_json()), separators=(",", ":")) + "\n"


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def carrier_for(span: trace.Span) -> dict[str, str]:
    """W3C trace context of ``span``, to hand to another process."""
    carrier: dict[str, str] = {}
    inject(carrier, context=trace.set_span_in_context(span))
    return carrier


@contextmanager
def attached(carrier: dict[str, str] | None) -> Iterator[None]:
    """Make the span in ``carrier`` the current parent for the block."""
    if not carrier:
        yield
        return
    token = otel_context.attach(extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)


def force_flush() -> None:
    provider = trace.get_tracer_provider()
    flush = getattr(provider, "force_flush", None)
    if flush:
        flush()
