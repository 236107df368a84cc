"""The error taxonomy: one exception type per row of Kimi's error table, plus local errors.

Every API error carries ``status``, ``error_type``, ``message`` and ``request_id`` and says
whether retrying can help. Messages tell the user what to do next. No exception ever holds
the API key: errors are built from response bodies and URLs, never from request headers.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from ._secret import redact


class AgentloopError(Exception):
    """Base class of every error raised by agentloop."""


class ConfigurationError(AgentloopError):
    """The runtime was configured in a way that cannot work (missing key, bad option)."""


class ToolSchemaError(AgentloopError):
    """A tool's parameter schema is not valid Moonshot Flavored JSON Schema."""

    def __init__(self, tool: str, problems: list[str]) -> None:
        self.tool = tool
        self.problems = problems
        super().__init__(
            f"tool {tool!r}: parameters schema is not accepted by the Kimi API: "
            + "; ".join(problems)
        )


class APIError(AgentloopError):
    """An error answered by the model API (or the network on the way to it)."""

    retryable: ClassVar[bool] = False
    default_hint: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        hint: str | None = None,
    ) -> None:
        self.status = status
        self.error_type = error_type
        self.message = redact(message)  # a server may echo the key in its error text
        self.request_id = request_id
        self.retry_after = retry_after
        self.hint = hint if hint is not None else self.default_hint
        super().__init__(self._render())

    def _render(self) -> str:
        head = ""
        if self.status:  # "HTTP 503: ..." when the server named no error type, never "None"
            head = (
                f"{self.status} {self.error_type}: " if self.error_type else f"HTTP {self.status}: "
            )
        text = f"{head}{self.message}"
        if self.hint:
            text += f" — {self.hint}"
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, error_type={self.error_type!r}, "
            f"message={self.message!r}, request_id={self.request_id!r})"
        )


class InvalidRequestError(APIError):
    """400 invalid_request_error: the request itself is wrong; retrying cannot help."""

    default_hint = "fix the request; retrying the same request will fail again"


class ContextLengthError(InvalidRequestError):
    """400: prompt + max_tokens exceeds the model's window. ``window`` is the window the server
    named (None when its wording does not say)."""

    default_hint = "shorten the history (context management) or lower the per-step budget"
    window: int | None = None


class EmptyResponseError(APIError):
    """HTTP 200 with no data at all, twice for the same request. llama.cpp's servers answer a
    streamed prompt over the window this way; the first time is retried (it can be transient),
    a repeat is this error, not retried again."""

    default_hint = (
        "the likely cause is a prompt (plus max_tokens) over the server's context window: "
        "shorten the history, lower max_tokens, or pass context_window= with the server's "
        "real window"
    )


class EstimatedUsageWarning(UserWarning):
    """A response carried no usage, so its tokens (and cost) are agentloop's estimate; the
    budgets are enforced on the estimate. Issued once per run."""


class ContentFilterError(APIError):
    """400 content_filter: the input or the output was judged high-risk."""

    default_hint = "the request or the model's output was refused by the content filter"


class AuthenticationError(APIError):
    """401: the key is wrong for this base URL (keys are region-bound)."""


class PermissionDeniedError(APIError):
    """403 permission_denied_error."""

    default_hint = "this key is not allowed to use this model or endpoint"


class NotFoundError(APIError):
    """404 resource_not_found_error: unknown or retired model, or wrong base URL."""

    default_hint = "check the model name and that base_url points at the Moonshot API"


class RateLimitError(APIError):
    """429 rate_limit_reached_error (RPM, TPM or concurrency). Retryable after the stated time."""

    retryable = True
    default_hint = "lower concurrency or the limiter's rpm/tpm to match your account tier"


class EngineOverloadedError(APIError):
    """429 engine_overloaded_error. Retryable with jittered backoff."""

    retryable = True
    default_hint = "the service is overloaded; retrying with backoff"


class QuotaExceededError(APIError):
    """429 exceeded_current_quota_error: out of balance or daily tokens. A stop, not a retry."""

    default_hint = "the account's quota or balance is used up; top up or wait for the daily reset"


class ServerError(APIError):
    """5xx server_error / unexpected_output. Retryable."""

    retryable = True


class APIConnectionError(APIError):
    """The connection failed, was reset or timed out before a full response arrived."""

    retryable = True


class NothingListeningError(APIConnectionError):
    """The connection was refused: no server listens at the base URL's host and port."""

    default_hint = "nothing is listening there: start the server, or fix base_url"


class StreamInterruptedError(APIConnectionError):
    """A streamed response ended before its end marker, or carried a malformed event."""


class ProtocolError(StreamInterruptedError):
    """A chunk or a response body was valid JSON of the wrong shape (a field missing where it
    is needed, or of another type). Retried like a cut stream."""


class StreamStalledError(StreamInterruptedError):
    """No data arrived within the first-byte or idle timeout (keep-alive comments do not
    count). Retried like a cut stream, within ``RetryPolicy.max_total_s``."""


class UnexpectedResponseError(APIError):
    """A 200 whose body is neither an event stream nor JSON: a proxy's or captive portal's page
    rather than the API. Not retried: the same address will answer the same way."""

    default_hint = (
        "base_url may point at a proxy or captive portal rather than the API; "
        "check base_url and the network"
    )

    def _render(self) -> str:  # the message names the status itself
        return f"{self.message} — {self.hint}" if self.hint else self.message


class RetriesExhaustedError(APIError):
    """Every allowed attempt failed with a retryable error, or the call's time bound ran out
    (``reason`` says which, e.g. a stated wait longer than what is left)."""

    def __init__(
        self, last: APIError, attempts: int, elapsed: float, reason: str | None = None
    ) -> None:
        self.last = last
        self.attempts = attempts
        self.elapsed = elapsed
        self.reason = reason
        why = f": {reason}" if reason else ""
        hint = "raise RetryPolicy.max_attempts / max_total_s"
        if isinstance(last, RateLimitError):
            hint += ", or lower the request rate (the limiter's rpm/tpm/max_concurrency)"
        super().__init__(
            f"gave up after {attempts} attempt(s) in {elapsed:.1f}s{why}; last error: {last}",
            status=last.status,
            error_type=last.error_type,
            request_id=last.request_id,
            hint=hint,
        )

    def _render(self) -> str:  # the last error's text carries its own status and type
        return f"{self.message} — {self.hint}"


_BY_TYPE: dict[str, type[APIError]] = {
    "invalid_request_error": InvalidRequestError,
    "content_filter": ContentFilterError,
    "invalid_authentication_error": AuthenticationError,
    "incorrect_api_key_error": AuthenticationError,
    "authentication_error": AuthenticationError,
    "permission_denied_error": PermissionDeniedError,
    "resource_not_found_error": NotFoundError,
    "rate_limit_reached_error": RateLimitError,
    "engine_overloaded_error": EngineOverloadedError,
    "exceeded_current_quota_error": QuotaExceededError,
    "server_error": ServerError,
    "unexpected_output": ServerError,
}

_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}


def error_from_response(
    status: int,
    body: Any,
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
    base_url: str | None = None,
) -> APIError:
    """Map an HTTP error response to the matching exception type."""
    error_type: str | None = None
    message = ""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            error_type = err.get("type") if isinstance(err.get("type"), str) else None
            message = str(err.get("message") or "")
        elif isinstance(err, str):
            message = err
    if not message:
        message = "(no error message)"
    cls = _BY_TYPE.get(error_type or "")
    if cls is None:
        cls = ServerError if status >= 500 else _BY_STATUS.get(status, APIError)
    window: int | None = None
    if status == 400 and cls in (InvalidRequestError, APIError):
        context, window = context_length(body, message)
        if context:
            cls = ContextLengthError
    hint: str | None = None
    if cls is AuthenticationError:
        hint = (
            f"the key was rejected by {base_url or 'the API'}. Moonshot keys are region-bound: "
            "keys from platform.moonshot.ai only work with https://api.moonshot.ai/v1 and keys "
            "from platform.moonshot.cn only with https://api.moonshot.cn/v1 — set base_url "
            "(or MOONSHOT_BASE_URL) to your key's region"
        )
    error = cls(
        message,
        status=status,
        error_type=error_type,
        request_id=request_id,
        retry_after=retry_after,
        hint=hint,
    )
    if window is not None and isinstance(error, ContextLengthError):
        error.window = window
    return error


# How each server words a prompt over its window, with the window where the text names it:
# Kimi; OpenAI, vLLM and llama-cpp-python ("This model's maximum context length is N tokens",
# code context_length_exceeded); SGLang (two wordings); llama.cpp's llama-server
# (exceed_context_size_error with n_ctx beside the message, and its log line's wording).
_CONTEXT_WORDINGS = (
    re.compile(r"exceeded model token limit:?\s*(\d+)?", re.IGNORECASE),
    re.compile(r"maximum context length (?:is|of) (\d+)", re.IGNORECASE),
    re.compile(r"longer than the model's context length \((\d+)", re.IGNORECASE),
    re.compile(r"exceeds? (?:the )?(?:available )?context (?:size|window)(?: of (\d+))?", re.I),
    re.compile(r"context length exceeded", re.IGNORECASE),
)
_CONTEXT_CODES = frozenset({"context_length_exceeded", "exceed_context_size_error"})


def context_length(body: Any, message: str) -> tuple[bool, int | None]:
    """Whether an error body says the prompt is over the window, and the window it names."""
    err = body.get("error") if isinstance(body, dict) else None
    fields = err if isinstance(err, dict) else {}
    codes = {v for v in (fields.get("code"), fields.get("type")) if isinstance(v, str)}
    window: int | None = None
    n_ctx = fields.get("n_ctx")  # llama-server puts the window beside the message
    if isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and n_ctx > 0:
        window = n_ctx
    matched = bool(codes & _CONTEXT_CODES)
    for pattern in _CONTEXT_WORDINGS:
        match = pattern.search(message)
        if match:
            matched = True
            if window is None and match.groups() and match.group(1):
                window = int(match.group(1))
            break
    return matched, window if matched else None
