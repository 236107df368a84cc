"""OpenTelemetry spans built from the event stream.

One ``invoke_agent`` span per run, a ``chat`` span per model call and an ``execute_tool`` span
per tool call, with the GenAI semantic-convention attributes plus cached tokens, limiter wait
and retries. Uses only opentelemetry-api: unless the application installs a tracer provider,
the tracer is a no-op. No span carries the API key (no span sees a request header).
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from . import events as ev

_tracer = trace.get_tracer("agentloop")


class Telemetry:
    def __init__(self, model: str, provider: str) -> None:
        self.model = model
        self.provider = provider

    def run(self, task: str) -> RunRecorder | NullRecorder:
        # With no tracer provider installed every span would be a no-op: skip building them.
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            return NullRecorder()
        return RunRecorder(self)


class NullRecorder:
    __slots__ = ()

    def on_event(self, event: ev.Event) -> None:
        pass


class RunRecorder:
    """Turns one run's events into spans. The ``chat`` span of a step is written when the step
    finishes (its usage is known then), with the times the model call actually began and ended."""

    __slots__ = ("_chat_end", "_chat_start", "_ctx", "_max_tokens", "_run", "_tools", "telemetry")

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self._run: Span | None = None
        self._ctx: Any = None
        self._chat_start = 0
        self._chat_end: int | None = None
        self._max_tokens = 0
        self._tools: dict[str, Span] = {}

    def on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.ReasoningDelta | ev.TextDelta | ev.OutputDelta):
            return  # the hot path: deltas make no spans
        t = self.telemetry
        common = {
            "gen_ai.system": t.provider,
            "gen_ai.provider.name": t.provider,
            "gen_ai.request.model": t.model,
        }
        if isinstance(event, ev.RunStarted):
            self._run = _tracer.start_span(
                "invoke_agent", attributes={"gen_ai.operation.name": "invoke_agent", **common}
            )
            self._ctx = trace.set_span_in_context(self._run)
        elif isinstance(event, ev.StepStarted):
            self._chat_start = time.time_ns()
            self._chat_end = None
            self._max_tokens = event.max_tokens
        elif isinstance(event, ev.ToolCallStarted):
            if self._chat_end is None:
                self._chat_end = time.time_ns()
            self._tools[event.call_id] = _tracer.start_span(
                f"execute_tool {event.name}",
                context=self._ctx,
                attributes={
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": event.name,
                    "gen_ai.tool.call.id": event.call_id,
                    # where the tool comes from: "python", or "mcp:<server>"
                    "agentloop.tool.source": event.source or "python",
                },
            )
        elif isinstance(event, ev.ToolCallFinished):
            span = self._tools.pop(event.call_id, None)
            if span is not None:
                if not event.ok:
                    span.set_status(Status(StatusCode.ERROR, event.error or "error"))
                    span.set_attribute("error.type", event.error or "error")
                span.end()
        elif isinstance(event, ev.StepFinished):
            r = event.record
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": "chat",
                **common,
                "gen_ai.request.max_tokens": self._max_tokens,
                "gen_ai.usage.input_tokens": r.usage.input_tokens,
                "gen_ai.usage.output_tokens": r.usage.output_tokens,
                "gen_ai.usage.cached_input_tokens": r.usage.cached_input_tokens,
                "agentloop.limiter_wait_s": r.limiter_wait_s,
                "agentloop.retries": r.retries,
            }
            if r.usage.estimated:  # the server reported none: these counts are an estimate
                attributes["agentloop.usage.estimated"] = True
            if r.finish_reason:
                attributes["gen_ai.response.finish_reasons"] = [r.finish_reason]
            if r.request_id:
                attributes["gen_ai.response.id"] = r.request_id
            span = _tracer.start_span(
                f"chat {t.model}",
                context=self._ctx,
                attributes=attributes,
                start_time=self._chat_start,
            )
            span.end(end_time=self._chat_end or time.time_ns())
        elif isinstance(event, ev.RunFinished):
            for span in self._tools.values():
                span.end()
            if self._run is not None:
                res = event.result
                self._run.set_attribute("gen_ai.usage.input_tokens", res.usage.input_tokens)
                self._run.set_attribute("gen_ai.usage.output_tokens", res.usage.output_tokens)
                self._run.set_attribute(
                    "gen_ai.usage.cached_input_tokens", res.usage.cached_input_tokens
                )
                if res.usage.estimated:
                    self._run.set_attribute("agentloop.usage.estimated", True)
                self._run.set_attribute("agentloop.stop_reason", res.stop_reason)
                self._run.set_attribute("agentloop.steps", len(res.steps))
                self._run.set_attribute("agentloop.cost_usd", res.cost_usd)
                if res.stop_reason == "error":
                    self._run.set_status(Status(StatusCode.ERROR, res.error or "error"))
                self._run.end()


__all__ = ["RunRecorder", "Telemetry"]
