"""Anthropic Messages API: ``/v1/messages``, ``/v1/messages/count_tokens``, models.

Wire formats follow the ``anthropic`` SDK 2.17 types: Message, Usage, the raw
stream events and the ``{"type": "error", "error": {...}}`` error body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from aiohttp import web

from . import faults
from .context import SimContext, get_context
from .controls import ControlError, RequestControls, last_user_text, read_controls
from .parsing import (
    InvalidBody,
    PromptTokens,
    bearer_token,
    key_status,
    read_json_object,
    split_cached,
)
from .text import (
    Completion,
    count_json_tokens,
    count_tokens,
    generate,
    request_seed,
    split_chunks,
)
from .wire import json_response, sse_event, start_stream

log = logging.getLogger(__name__)

# (id, display name, created_at) of the models that GET /v1/models lists.
MODELS = (
    ("claude-opus-4-1-20250805", "Claude Opus 4.1", "2025-08-05T00:00:00Z"),
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
    ("claude-3-5-haiku-20241022", "Claude Haiku 3.5", "2024-10-22T00:00:00Z"),
)

# Fault name to (HTTP status, error type, message).
STATUS_FAULTS = {
    "rate_limit": (
        429,
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of "
        "50 requests per minute.",
    ),
    "rate_limit_tokens": (
        429,
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of "
        "40,000 input tokens per minute.",
    ),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "server_error": (500, "api_error", "Internal server error"),
    "not_found": (404, "not_found_error", "model: {model}"),
    "bad_request": (400, "invalid_request_error", "Simulated invalid request."),
    "auth_error": (401, "authentication_error", "invalid x-api-key"),
    "permission_error": (
        403,
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    "too_large": (413, "request_too_large", "Request exceeds the maximum size"),
}
STREAM_ERROR = ("overloaded_error", "Overloaded")

# Request fields that do not change the generated text, so that a lower
# max_tokens or a stop sequence cuts the same text that a full request returns.
EXCLUDED_FROM_SEED = frozenset(
    {"max_tokens", "stream", "stop_sequences", "metadata", "service_tier"}
)
STOP_REASONS = {"end": "end_turn", "max_tokens": "max_tokens"}


class ApiError(Exception):
    """An error that the handler sends as an Anthropic error response."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


@dataclass(slots=True)
class MessagePlan:
    """Everything the response to one ``POST /v1/messages`` contains."""

    message_id: str
    request_id: str
    model: str
    stream: bool
    controls: RequestControls
    prompt: PromptTokens
    completion: Completion
    chunks: list[str]


def error_body(request_id: str, error_type: str, message: str) -> dict[str, object]:
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }


def error_response(
    request_id: str, error: ApiError, extra_headers: dict[str, str] | None = None
) -> web.Response:
    log.debug(
        "sending %d %s for request %s", error.status, error.error_type, request_id
    )
    headers = {"request-id": request_id}
    if extra_headers:
        headers.update(extra_headers)
    body = error_body(request_id, error.error_type, error.message)
    return json_response(body, error.status, headers)


def check_auth(request: web.Request, ctx: SimContext) -> None:
    """Raise ApiError unless the key and ``anthropic-version`` header are valid."""
    key = request.headers.get("x-api-key") or bearer_token(request)
    status = key_status(key, ctx.settings)
    if status == "missing":
        raise ApiError(401, "authentication_error", "x-api-key header is required")
    if status == "invalid":
        raise ApiError(401, "authentication_error", "invalid x-api-key")
    if not request.headers.get("anthropic-version"):
        raise ApiError(
            400, "invalid_request_error", "anthropic-version: header is required"
        )


async def read_body(request: web.Request) -> dict[str, object]:
    try:
        return await read_json_object(request)
    except InvalidBody as error:
        raise ApiError(400, "invalid_request_error", str(error)) from None


def validate_prompt(body: dict[str, object]) -> list[object]:
    """Check ``model`` and ``messages`` like the API does, returning the messages."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ApiError(400, "invalid_request_error", "model: Field required")
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, "invalid_request_error", "messages: Field required")
    if not isinstance(messages, list):
        raise ApiError(400, "invalid_request_error", "messages: Input should be a list")
    if not messages:
        raise ApiError(
            400, "invalid_request_error", "messages: at least one message is required"
        )
    for index, message in enumerate(messages):
        _validate_message(index, message)
    return messages


def _validate_message(index: int, message: object) -> None:
    if not isinstance(message, dict):
        raise ApiError(
            400,
            "invalid_request_error",
            f"messages.{index}: Input should be a valid dictionary",
        )
    if message.get("role") not in ("user", "assistant"):
        raise ApiError(
            400,
            "invalid_request_error",
            f"messages.{index}.role: Input should be 'user' or 'assistant'",
        )
    if "content" not in message:
        raise ApiError(
            400, "invalid_request_error", f"messages.{index}.content: Field required"
        )


def validate_max_tokens(body: dict[str, object]) -> int:
    value = body.get("max_tokens")
    if value is None:
        raise ApiError(400, "invalid_request_error", "max_tokens: Field required")
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(
            400, "invalid_request_error", "max_tokens: Input should be a valid integer"
        )
    if value < 1:
        raise ApiError(
            400,
            "invalid_request_error",
            "max_tokens: Input should be greater than or equal to 1",
        )
    return value


def prompt_parts(body: dict[str, object]) -> list[object]:
    """List the prompt in cache order: tools, then system, then message blocks."""
    parts: list[object] = []
    tools = body.get("tools")
    if isinstance(tools, list):
        parts.extend(tools)
    system = body.get("system")
    if isinstance(system, list):
        parts.extend(system)
    elif isinstance(system, str) and system:
        parts.append(system)
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            parts.extend(content)
        elif isinstance(content, str):
            parts.append(content)
    return parts


def part_tokens(part: object) -> int:
    """Count a text block or string by its text and any other block by its JSON."""
    if isinstance(part, str):
        return count_tokens(part)
    if isinstance(part, dict) and part.get("type") == "text":
        text = part.get("text")
        return count_tokens(text) if isinstance(text, str) else 0
    return count_json_tokens(part)


def count_prompt(
    body: dict[str, object], ctx: SimContext, cache_mode: str
) -> PromptTokens:
    """Count input tokens and split off the prefix up to the last cache_control."""
    parts = prompt_parts(body)
    sizes = [part_tokens(part) for part in parts]
    total = sum(sizes)
    last_marked = -1
    for index, part in enumerate(parts):
        if isinstance(part, dict) and part.get("cache_control"):
            last_marked = index
    prefix = sum(sizes[: last_marked + 1])
    seen = False
    if cache_mode == "auto" and prefix > 0:
        prefix_seed = request_seed([body.get("model"), parts[: last_marked + 1]])
        seen = ctx.state.mark_prefix_seen(prefix_seed)
    return split_cached(total, prefix, cache_mode, seen)


def read_request_controls(
    request: web.Request, ctx: SimContext, messages: list[object]
) -> RequestControls:
    try:
        return read_controls(ctx.defaults, request.headers, last_user_text(messages))
    except ControlError as error:
        raise ApiError(400, "invalid_request_error", str(error)) from None


def plan_message(
    body: dict[str, object], ctx: SimContext, request: web.Request, request_id: str
) -> MessagePlan:
    messages = validate_prompt(body)
    max_tokens = validate_max_tokens(body)
    controls = read_request_controls(request, ctx, messages)
    seed_fields = {k: v for k, v in body.items() if k not in EXCLUDED_FROM_SEED}
    stop_sequences = body.get("stop_sequences")
    if not isinstance(stop_sequences, list):
        stop_sequences = None
    completion = generate(
        request_seed(seed_fields), controls.output_tokens, max_tokens, stop_sequences
    )
    tokens_per_chunk = ctx.settings.tokens_per_chunk
    return MessagePlan(
        message_id=ctx.new_id("msg_"),
        request_id=request_id,
        model=str(body["model"]),
        stream=body.get("stream") is True,
        controls=controls,
        prompt=count_prompt(body, ctx, controls.cache_mode),
        completion=completion,
        chunks=split_chunks(completion.text, tokens_per_chunk, controls.chunks),
    )


def usage(plan: MessagePlan, output_tokens: int) -> dict[str, object]:
    return {
        "input_tokens": plan.prompt.uncached,
        "cache_creation_input_tokens": plan.prompt.cache_creation,
        "cache_read_input_tokens": plan.prompt.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": plan.prompt.cache_creation,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def stop_reason(completion: Completion) -> str:
    return STOP_REASONS.get(completion.stop, completion.stop)


def message_body(plan: MessagePlan) -> dict[str, object]:
    return {
        "id": plan.message_id,
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": [{"type": "text", "text": plan.completion.text}],
        "stop_reason": stop_reason(plan.completion),
        "stop_sequence": plan.completion.stop_sequence,
        "usage": usage(plan, plan.completion.output_tokens),
    }


def response_headers(plan: MessagePlan) -> dict[str, str]:
    return {"request-id": plan.request_id}


def fault_headers(fault: str, controls: RequestControls) -> dict[str, str]:
    if not fault.startswith("rate_limit"):
        return {}
    kind = "tokens" if fault == "rate_limit_tokens" else "requests"
    return {
        "retry-after": str(controls.retry_after_s),
        f"anthropic-ratelimit-{kind}-remaining": "0",
    }


async def create_message(request: web.Request) -> web.StreamResponse:
    """Handle ``POST /v1/messages``."""
    ctx = get_context(request)
    request_id = ctx.new_id("req_")
    try:
        check_auth(request, ctx)
        plan = plan_message(await read_body(request), ctx, request, request_id)
    except ApiError as error:
        return error_response(request_id, error)
    fault = plan.controls.fault
    if fault is not None:
        early = await early_fault(request, plan, fault)
        if early is not None:
            return early
    ttfb_ms = ctx.settings.slow_ms if fault == "slow" else plan.controls.ttfb_ms
    await faults.sleep_ms(ttfb_ms)
    if plan.stream:
        return await stream_message(request, plan)
    return await send_message(request, plan)


async def early_fault(
    request: web.Request, plan: MessagePlan, fault: str
) -> web.StreamResponse | None:
    """Apply a fault that replaces the whole response, or return None."""
    if fault == "reset":
        faults.abort_connection(request)
        return web.Response()
    if fault == "timeout":
        await faults.hang(request, get_context(request).settings.hang_s)
        return web.Response()
    if fault == "stream_error" and not plan.stream:
        fault = "overloaded"
    if fault not in STATUS_FAULTS:
        return None
    status, error_type, message = STATUS_FAULTS[fault]
    error = ApiError(status, error_type, message.format(model=plan.model))
    return error_response(plan.request_id, error, fault_headers(fault, plan.controls))


def generation_ms(plan: MessagePlan) -> float:
    """Return the time between the first and the last stream delta."""
    return plan.controls.chunk_ms * max(0, len(plan.chunks) - 1)


async def send_message(request: web.Request, plan: MessagePlan) -> web.StreamResponse:
    """Send a non-streaming message after the time its stream would take."""
    await faults.sleep_ms(generation_ms(plan))
    body = orjson.dumps(message_body(plan))
    fault = plan.controls.fault
    if fault == "invalid_json":
        body = body[: len(body) // 2]
    if fault != "reset_mid_stream":
        return web.Response(
            body=body,
            content_type="application/json",
            headers=response_headers(plan),
        )
    response = web.StreamResponse(headers=response_headers(plan))
    response.content_type = "application/json"
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    faults.abort_connection(request)
    return response


async def stream_message(request: web.Request, plan: MessagePlan) -> web.StreamResponse:
    """Send the message as server-sent events, one write per event."""
    response = await start_stream(request, response_headers(plan))
    start = message_body(plan)
    start["content"] = []
    start["stop_reason"] = None
    start["stop_sequence"] = None
    start["usage"] = usage(plan, 1)
    await response.write(
        sse_event("message_start", {"type": "message_start", "message": start})
    )
    block_start = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    await response.write(sse_event("content_block_start", block_start))
    await response.write(b'event: ping\ndata: {"type": "ping"}\n\n')
    completed = await stream_deltas(request, response, plan)
    if not completed:
        return response
    await response.write(
        sse_event("content_block_stop", {"type": "content_block_stop", "index": 0})
    )
    await response.write(sse_event("message_delta", message_delta(plan)))
    await response.write(sse_event("message_stop", {"type": "message_stop"}))
    await response.write_eof()
    return response


async def stream_deltas(
    request: web.Request, response: web.StreamResponse, plan: MessagePlan
) -> bool:
    """Send the text deltas, returning False when a fault ended the stream."""
    fault = plan.controls.fault
    mid_stream = fault in ("stream_error", "reset_mid_stream", "invalid_json")
    fault_at = faults.fault_index(len(plan.chunks), plan.controls.fault_after)
    for index in range(len(plan.chunks) + 1):
        if mid_stream and index == fault_at:
            await send_stream_fault(request, response, plan)
            return False
        if index == len(plan.chunks):
            break
        if index > 0:
            await faults.sleep_ms(plan.controls.chunk_ms)
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": plan.chunks[index]},
        }
        await response.write(sse_event("content_block_delta", delta))
    return True


async def send_stream_fault(
    request: web.Request, response: web.StreamResponse, plan: MessagePlan
) -> None:
    fault = plan.controls.fault
    if fault == "reset_mid_stream":
        faults.abort_connection(request)
        return
    if fault == "invalid_json":
        await response.write(
            b'event: content_block_delta\ndata: {"type": "content_block_delta", '
            b'"index": 0, "delta": {"type": "text_d\n\n'
        )
    else:
        error_type, message = STREAM_ERROR
        body = error_body(plan.request_id, error_type, message)
        await response.write(sse_event("error", body))
    await response.write_eof()


def message_delta(plan: MessagePlan) -> dict[str, object]:
    return {
        "type": "message_delta",
        "delta": {
            "stop_reason": stop_reason(plan.completion),
            "stop_sequence": plan.completion.stop_sequence,
        },
        "usage": {
            "input_tokens": plan.prompt.uncached,
            "cache_creation_input_tokens": plan.prompt.cache_creation,
            "cache_read_input_tokens": plan.prompt.cache_read,
            "output_tokens": plan.completion.output_tokens,
        },
    }


async def count_message_tokens(request: web.Request) -> web.Response:
    """Handle ``POST /v1/messages/count_tokens``."""
    ctx = get_context(request)
    request_id = ctx.new_id("req_")
    try:
        check_auth(request, ctx)
        body = await read_body(request)
        validate_prompt(body)
    except ApiError as error:
        return error_response(request_id, error)
    tokens = sum(part_tokens(part) for part in prompt_parts(body))
    return json_response({"input_tokens": tokens}, headers={"request-id": request_id})


def model_info(model: tuple[str, str, str]) -> dict[str, object]:
    model_id, display_name, created_at = model
    return {
        "type": "model",
        "id": model_id,
        "display_name": display_name,
        "created_at": created_at,
    }


async def list_models(request: web.Request) -> web.Response:
    """Handle ``GET /v1/models`` with ``limit``, ``after_id`` and ``before_id``."""
    ctx = get_context(request)
    request_id = ctx.new_id("req_")
    try:
        check_auth(request, ctx)
        page = page_models(request.query)
    except ApiError as error:
        return error_response(request_id, error)
    return json_response(page, headers={"request-id": request_id})


def page_models(query: Mapping[str, str]) -> dict[str, object]:
    """Select one page of MODELS the way the API pages by id."""
    ids = [model[0] for model in MODELS]
    limit = _parse_limit(query.get("limit"))
    before_id = query.get("before_id")
    after_id = query.get("after_id")
    if before_id in ids:
        end = ids.index(before_id)
        start = max(0, end - limit)
        has_more = start > 0
    else:
        start = ids.index(after_id) + 1 if after_id in ids else 0
        end = min(len(ids), start + limit)
        has_more = end < len(ids)
    data = [model_info(model) for model in MODELS[start:end]]
    return {
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def _parse_limit(value: str | None) -> int:
    if value is None:
        return 20
    try:
        limit = int(value)
    except ValueError:
        raise ApiError(
            400, "invalid_request_error", "limit: Input should be a valid integer"
        ) from None
    if not 1 <= limit <= 1000:
        raise ApiError(
            400, "invalid_request_error", "limit: Input should be between 1 and 1000"
        )
    return limit


async def retrieve_model(request: web.Request) -> web.Response:
    """Handle ``GET /v1/models/{model_id}``."""
    ctx = get_context(request)
    request_id = ctx.new_id("req_")
    model_id = request.match_info["model_id"]
    try:
        check_auth(request, ctx)
    except ApiError as error:
        return error_response(request_id, error)
    for model in MODELS:
        if model[0] == model_id:
            return json_response(model_info(model), headers={"request-id": request_id})
    missing = ApiError(404, "not_found_error", f"model: {model_id}")
    return error_response(request_id, missing)
