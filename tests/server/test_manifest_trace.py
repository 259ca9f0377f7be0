"""A run's manifest carries the trace id of the span it ran in (empty without tracing),
and the trace URL template setting is checked at start-up."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider

from scillm.common.v1 import common_pb2
from scillm.server.manifests import ManifestClock
from scillm.server.settings import Settings


def test_the_manifest_takes_the_current_trace_id() -> None:
    assert ManifestClock("prove", common_pb2.RunContext(), request_id="r").manifest.trace_id == ""
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("call") as span:
        manifest = ManifestClock("prove", common_pb2.RunContext(), request_id="r").manifest
    assert manifest.trace_id == format(span.get_span_context().trace_id, "032x")
    assert len(manifest.trace_id) == 32


@pytest.mark.parametrize("template", ["http://j/trace/{}", "http://j/{trace}", "http://j/x",
                                      "http://j/{trace_id}/{oops}"])
def test_a_trace_url_template_must_name_only_trace_id(template: str) -> None:
    with pytest.raises(ValueError, match="trace_url_template"):
        Settings.from_env({"SCILLM_TRACE_URL_TEMPLATE": template})
    ok = Settings.from_env({"SCILLM_TRACE_URL_TEMPLATE": "http://j:16686/trace/{trace_id}"})
    assert ok.trace_url_template.endswith("{trace_id}")
