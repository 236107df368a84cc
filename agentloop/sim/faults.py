"""Fault injection: which request gets which failure.

Faults (names used by ``--faults`` and ``FaultPlan``):

=============  ==============================================================  ==========
name           what the simulator does                                          retryable
=============  ==============================================================  ==========
``429``        429 rate_limit_reached_error, Retry-After: ``retry_after`` s      yes
``retrydate``  429 rate_limit_reached_error, Retry-After as an HTTP date          yes
               ``retry_after`` s ahead (and no wait in the message)
``overload``   429 engine_overloaded_error                                      yes
``500``        500 server_error (``502``/``503`` likewise)                      yes
``reset``      closes the connection (TCP RST) before any response              yes
``cut``        streams part of the answer, then drops the connection            yes
``badsse``     sends a malformed ``data:`` line in the stream                   yes
``badchunk``   sends ``bad_chunk`` (valid JSON of the wrong shape) as a chunk    yes
               mid-stream, or as the whole body of a non-streamed response
``trickle``    headers, then SSE keep-alive comments forever, never data        yes (stall)
``silent``     headers, then nothing, the connection held open                  yes (stall)
``stall``      half the answer, then keep-alive comments forever               yes (stall)
``donecut``    a streamed answer cut to a role chunk and ``[DONE]``: no         yes
               finish_reason, no usage (llama.cpp under concurrency; the
               recorded ``cut_under_concurrency.txt``); a non-streamed
               request is answered normally
``gateway``    503 with a proxy's HTML page (no JSON error body)                yes
``html``       200 with a captive portal's HTML page                            no
``slow``       waits ``slow_seconds`` before the first byte                     (succeeds)
``truncargs``  finishes normally but cuts a tool call's arguments mid-JSON      no (the loop)
``quota``      429 exceeded_current_quota_error                                  no
``auth``       401 invalid_authentication_error                                  no
``filter``     400 content_filter                                               no
``403``        403 permission_denied_error                                      no
=============  ==============================================================  ==========
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

FAULTS = frozenset(
    {
        "429",
        "overload",
        "500",
        "502",
        "503",
        "reset",
        "cut",
        "badsse",
        "badchunk",
        "trickle",
        "silent",
        "stall",
        "donecut",
        "retrydate",
        "gateway",
        "html",
        "slow",
        "truncargs",
        "quota",
        "auth",
        "filter",
        "403",
    }
)
RETRYABLE = frozenset(
    {
        "429",
        "retrydate",
        "overload",
        "500",
        "502",
        "503",
        "gateway",
        "reset",
        "cut",
        "badsse",
        "badchunk",
        "trickle",
        "silent",
        "stall",
        "donecut",
    }
)
# what ``badchunk`` sends unless told otherwise: a choice that is null
BAD_CHUNK = '{"id": "bad", "object": "chat.completion.chunk", "choices": [null]}'


@dataclass
class FaultPlan:
    """``schedule`` maps a request number (1-based, chat completions only) to a fault;
    ``rates`` gives each fault a probability per request, drawn from a seeded generator."""

    schedule: dict[int, str] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    slow_seconds: float = 1.0
    retry_after: int = 1  # seconds the 429 faults ask for (``retrydate`` as an HTTP date)
    keepalive_seconds: float = 0.05  # between the comments of ``trickle`` and ``stall``
    bad_chunk: str = BAD_CHUNK  # the JSON text ``badchunk`` sends
    injected: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = (set(self.schedule.values()) | set(self.rates)) - FAULTS
        if unknown:
            raise ValueError(
                f"unknown fault(s): {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(FAULTS))}"
            )
        self._random = random.Random(self.seed)

    def pick(self, request_number: int) -> str | None:
        fault = self.schedule.get(request_number)
        if fault is None and self.rates:
            roll = self._random.random()
            for name, rate in sorted(self.rates.items()):
                if roll < rate:
                    fault = name
                    break
                roll -= rate
        if fault is not None:
            self.injected[fault] = self.injected.get(fault, 0) + 1
        return fault

    @classmethod
    def parse(cls, spec: str, seed: int = 0) -> FaultPlan:
        """``"429@3,cut@7"`` schedules by request number; ``"500=0.05,reset=0.01"`` sets rates."""
        plan = cls(seed=seed)
        for part in filter(None, (p.strip() for p in spec.split(","))):
            if "@" in part:
                name, _, at = part.partition("@")
                plan.schedule[int(at)] = name
            elif "=" in part:
                name, _, rate = part.partition("=")
                plan.rates[name] = float(rate)
            else:
                raise ValueError(f"bad fault spec {part!r}: use NAME@N or NAME=RATE")
        plan.__post_init__()
        return plan
