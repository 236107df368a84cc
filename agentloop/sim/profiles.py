"""Server profiles: how OpenAI-compatible servers other than Kimi answer (issue 13).

``SimConfig(profile="llamacpp")`` makes the simulator answer as llama-cpp-python's server did in
``shared/conformance/llamacpp`` (recorded traffic), ``"vllm"``, ``"sglang"``, ``"llama-server"``
(llama.cpp's own server) and ``"openai"`` as those servers word things. ``"kimi"`` (the
default) is the Kimi API the simulator always was. A profile sets:

- ``models``: the models served and their windows (``None``: Kimi's); ``any_model``: any model
  name is served, with the first window (llama.cpp serves one model whatever it is called)
- ``kimi_contract``: Kimi's key check per region (the others accept any key, or none)
- ``stream_usage``: ``"always"`` (Kimi), ``"requested"`` (``stream_options.include_usage``, as
  vLLM and OpenAI do) or ``"never"`` (llama-cpp-python ignores the option)
- ``listing``: the ``/v1/models`` entry of a model and its window (each server's own fields)
- ``context_error``: the status and body of a prompt over the window (each server's wording)
- ``streamed_overflow``: ``"error"``, or ``"empty200"``: a streamed prompt over the window is
  HTTP 200 with an empty body (llama-cpp-python)
- ``cut_when_busy``: a streamed request that arrives while another is generating gets a role
  chunk and ``[DONE]``, no finish_reason, no usage (llama-cpp-python under concurrency);
  ``cut_streams``: completion numbers (1-based) always cut that way
- ``buffers_tools`` and ``decode_tokens_per_s``: with tools offered, nothing is sent until the
  whole generation is done, ``completion_tokens / decode_tokens_per_s`` seconds on the clock
- ``ping``: a ``: ping`` comment opens every stream (sse-starlette)
- ``tool_preamble_tokens``: prompt tokens a request with tools costs beyond the simulator's
  count of its messages and schemas (a chat template's tool instructions: about 100 for
  Qwen2.5 behind llama-cpp-python, where the bytes/4 estimate ran 18-20% low); 0 by default

Change one field with ``profile("llamacpp", cut_streams=frozenset({1}))``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Listing = Callable[[str, int], dict[str, Any]]
ContextError = Callable[[int, int, int], tuple[int, dict[str, Any]]]


def _openai_wording(window: int, prompt: int, completion: int) -> str:
    return (
        f"This model's maximum context length is {window} tokens. However, you requested "
        f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the "
        "completion). Please reduce the length of the messages or completion."
    )


def kimi_error(window: int, prompt: int, completion: int) -> tuple[int, dict[str, Any]]:
    message = f"Your request exceeded model token limit: {window}"
    return 400, {"error": {"type": "invalid_request_error", "message": message}}


def openai_error(window: int, prompt: int, completion: int) -> tuple[int, dict[str, Any]]:
    """OpenAI's and llama-cpp-python's body (recorded in context_length_400.json)."""
    error = {
        "message": _openai_wording(window, prompt, completion),
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    return 400, {"error": error}


def vllm_error(window: int, prompt: int, completion: int) -> tuple[int, dict[str, Any]]:
    """vLLM's flat error object (no ``error`` wrapper)."""
    return 400, {
        "object": "error",
        "message": _openai_wording(window, prompt, completion),
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }


def sglang_error(window: int, prompt: int, completion: int) -> tuple[int, dict[str, Any]]:
    message = (
        f"Requested token count exceeds the model's maximum context length of {window} "
        f"tokens. You requested a total of {prompt + completion} tokens: {prompt} tokens from "
        f"the input messages and {completion} tokens for the completion. Please reduce the "
        "number of tokens in the input messages or the completion to fit within the limit."
    )
    return 400, {
        "object": "error",
        "message": message,
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }


def llama_server_error(window: int, prompt: int, completion: int) -> tuple[int, dict[str, Any]]:
    """llama.cpp's llama-server: its own type, the window beside the message."""
    error = {
        "code": 400,
        "message": "the request exceeds the available context size, try increasing it",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": prompt,
        "n_ctx": window,
    }
    return 400, {"error": error}


def kimi_listing(model: str, window: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "owned_by": "moonshot", "context_length": window}


def vllm_listing(model: str, window: int) -> dict[str, Any]:
    return {
        "id": model,
        "object": "model",
        "created": 1796162000,
        "owned_by": "vllm",
        "root": model,
        "parent": None,
        "max_model_len": window,
    }


def llama_server_listing(model: str, window: int) -> dict[str, Any]:
    # the trained window, which may be larger than the n_ctx the server runs with
    meta = {"vocab_type": 2, "n_vocab": 151936, "n_ctx_train": window, "n_embd": 1536}
    return {"id": model, "object": "model", "owned_by": "llamacpp", "meta": meta}


def llamacpp_listing(model: str, window: int) -> dict[str, Any]:
    # llama-cpp-python reports no window (see the recorded traffic's README)
    return {"id": model, "object": "model", "owned_by": "me", "permissions": []}


def openai_listing(model: str, window: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 1796162000, "owned_by": "system"}


@dataclass(frozen=True)
class ServerProfile:
    name: str
    models: Mapping[str, int] | None = None
    any_model: bool = False
    kimi_contract: bool = True
    stream_usage: Literal["always", "requested", "never"] = "always"
    listing: Listing = kimi_listing
    context_error: ContextError = kimi_error
    streamed_overflow: Literal["error", "empty200"] = "error"
    cut_when_busy: bool = False
    cut_streams: frozenset[int] = field(default_factory=frozenset)
    buffers_tools: bool = False
    decode_tokens_per_s: float = 50.0
    ping: bool = False
    tool_preamble_tokens: int = 0


LOCAL_MODEL = "qwen2.5-coder-1.5b"

PROFILES: dict[str, ServerProfile] = {
    "kimi": ServerProfile("kimi"),
    # llama-cpp-python 0.3.36 (the recorded traffic): n_ctx 4096
    "llamacpp": ServerProfile(
        "llamacpp",
        models={LOCAL_MODEL: 4096},
        any_model=True,
        kimi_contract=False,
        stream_usage="never",
        listing=llamacpp_listing,
        context_error=openai_error,
        streamed_overflow="empty200",
        cut_when_busy=True,
        buffers_tools=True,
        decode_tokens_per_s=20.0,
        ping=True,
    ),
    "llama-server": ServerProfile(
        "llama-server",
        models={LOCAL_MODEL: 4096},
        any_model=True,
        kimi_contract=False,
        stream_usage="requested",
        listing=llama_server_listing,
        context_error=llama_server_error,
    ),
    "vllm": ServerProfile(
        "vllm",
        models={"Qwen/Qwen2.5-Coder-1.5B-Instruct": 32_768, "moonshotai/Kimi-K2-Instruct": 131_072},
        kimi_contract=False,
        stream_usage="requested",
        listing=vllm_listing,
        context_error=vllm_error,
    ),
    "sglang": ServerProfile(
        "sglang",
        models={"Qwen/Qwen2.5-Coder-1.5B-Instruct": 32_768},
        kimi_contract=False,
        stream_usage="requested",
        listing=vllm_listing,
        context_error=sglang_error,
    ),
    "openai": ServerProfile(
        "openai",
        models={"gpt-4o-mini": 128_000},
        kimi_contract=False,
        stream_usage="requested",
        listing=openai_listing,
        context_error=openai_error,
    ),
}


def profile(name: str | ServerProfile, **changes: Any) -> ServerProfile:
    """A profile by name (or as given), with ``changes`` to its fields."""
    if isinstance(name, ServerProfile):
        base = name
    else:
        try:
            base = PROFILES[name]
        except KeyError:
            raise ValueError(
                f"unknown server profile {name!r}; known: {', '.join(sorted(PROFILES))}"
            ) from None
    return dataclasses.replace(base, **changes) if changes else base


__all__ = ["LOCAL_MODEL", "PROFILES", "ServerProfile", "profile"]
