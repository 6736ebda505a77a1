"""OpenAI API: ``/v1/chat/completions``, ``/v1/embeddings`` and models.

Wire formats follow the ``openai`` SDK 3.60 types: ChatCompletion,
ChatCompletionChunk, CompletionUsage, CreateEmbeddingResponse and the
``{"error": {"message", "type", "param", "code"}}`` error body.
"""

from __future__ import annotations

import array
import base64
import logging
import time
from dataclasses import dataclass

import orjson
from aiohttp import web

from . import faults
from .context import SimContext, get_context
from .controls import (
    ControlError,
    RequestControls,
    content_text,
    last_user_text,
    read_controls,
)
from .parsing import (
    InvalidBody,
    PromptTokens,
    bearer_token,
    key_status,
    masked_key,
    read_json_object,
    split_cached,
)
from .text import (
    Completion,
    count_json_tokens,
    count_tokens,
    embedding_vector,
    generate,
    request_seed,
    split_chunks,
)
from .wire import json_response, sse_data, start_stream

log = logging.getLogger(__name__)

# (id, created, owned_by) of the models that GET /v1/models lists.
MODELS = (
    ("gpt-4o", 1715367049, "system"),
    ("gpt-4o-mini", 1721172741, "system"),
    ("gpt-4.1", 1744316542, "system"),
    ("gpt-4.1-mini", 1744318173, "system"),
    ("text-embedding-3-small", 1705948997, "system"),
    ("text-embedding-3-large", 1705953180, "system"),
)
SYSTEM_FINGERPRINT = "fp_sim00001"
RETRY_HINT = "Visit https://platform.openai.com/account/rate-limits to learn more."

# Fault name to (HTTP status, error type, code, param, message template).
STATUS_FAULTS = {
    "rate_limit": (
        429,
        "requests",
        "rate_limit_exceeded",
        None,
        "Rate limit reached for {model} in organization org-sim on requests per "
        "min (RPM): Limit 60, Used 60, Requested 1. Please try again in "
        "{retry_after}s. " + RETRY_HINT,
    ),
    "rate_limit_tokens": (
        429,
        "tokens",
        "rate_limit_exceeded",
        None,
        "Rate limit reached for {model} in organization org-sim on tokens per "
        "min (TPM): Limit 30000, Used 30000, Requested {prompt_tokens}. Please try "
        "again in {retry_after}s. " + RETRY_HINT,
    ),
    "overloaded": (
        503,
        "server_error",
        None,
        None,
        "The server is overloaded or not ready yet.",
    ),
    "server_error": (
        500,
        "server_error",
        None,
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    "not_found": (
        404,
        "invalid_request_error",
        "model_not_found",
        None,
        "The model `{model}` does not exist or you do not have access to it.",
    ),
    "bad_request": (
        400,
        "invalid_request_error",
        None,
        None,
        "Simulated invalid request.",
    ),
    "auth_error": (
        401,
        "invalid_request_error",
        "invalid_api_key",
        None,
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    "permission_error": (
        403,
        "invalid_request_error",
        None,
        None,
        "You are not allowed to sample from this model",
    ),
    "too_large": (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
        "This model's maximum context length is 128000 tokens. However, your "
        "messages resulted in {prompt_tokens} tokens. Please reduce the length "
        "of the messages.",
    ),
}
STREAM_ERROR = STATUS_FAULTS["server_error"]
INVALID_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means "
    "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
    "payload, but what was sent was not valid JSON.)"
)
MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an "
    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)

# Request fields that do not change the generated text (see anthropic.py).
EXCLUDED_FROM_SEED = frozenset(
    {
        "max_tokens",
        "max_completion_tokens",
        "stream",
        "stream_options",
        "stop",
        "user",
        "metadata",
        "store",
        "service_tier",
    }
)
FINISH_REASONS = {"end": "stop", "max_tokens": "length", "stop_sequence": "stop"}


class ApiError(Exception):
    """An error that the handler sends as an OpenAI error response."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(slots=True)
class ChatPlan:
    """Everything the response to one ``POST /v1/chat/completions`` contains."""

    completion_id: str
    request_id: str
    created: int
    model: str
    stream: bool
    include_usage: bool
    controls: RequestControls
    prompt: PromptTokens
    completion: Completion
    chunks: list[str]


def error_response(
    request_id: str, error: ApiError, extra_headers: dict[str, str] | None = None
) -> web.Response:
    log.debug("sending %d %s for request %s", error.status, error.code, request_id)
    headers = {"x-request-id": request_id}
    if extra_headers:
        headers.update(extra_headers)
    return json_response(error.body(), error.status, headers)


def check_auth(request: web.Request, ctx: SimContext) -> None:
    key = bearer_token(request)
    status = key_status(key, ctx.settings)
    if status == "missing":
        raise ApiError(401, MISSING_KEY_MESSAGE)
    if status == "invalid":
        raise ApiError(
            401,
            f"Incorrect API key provided: {masked_key(key)}. You can find your API "
            "key at https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )


async def read_body(request: web.Request) -> dict[str, object]:
    try:
        return await read_json_object(request)
    except InvalidBody:
        raise ApiError(400, INVALID_JSON_MESSAGE) from None


def validate_model(body: dict[str, object]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter")
    return model


def validate_messages(body: dict[str, object]) -> list[object]:
    messages = body.get("messages")
    if messages is None:
        raise ApiError(
            400,
            "Missing required parameter: 'messages'.",
            code="missing_required_parameter",
            param="messages",
        )
    if not isinstance(messages, list):
        raise ApiError(
            400,
            "Invalid type for 'messages': expected an array.",
            code="invalid_type",
            param="messages",
        )
    if not messages:
        raise ApiError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum "
            "length 1, but got an empty array instead.",
            code="empty_array",
            param="messages",
        )
    return messages


def validate_max_tokens(body: dict[str, object]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise ApiError(
                400,
                f"Invalid type for '{name}': expected an integer.",
                code="invalid_type",
                param=name,
            )
        if value < 1:
            raise ApiError(
                400,
                f"Invalid '{name}': integer below minimum value. Expected a value "
                f">= 1, but got {value} instead.",
                code="integer_below_min_value",
                param=name,
            )
        return value
    return None


def stop_sequences(body: dict[str, object]) -> list[str] | None:
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        return [item for item in stop if isinstance(item, str)]
    return None


def message_tokens(message: object) -> int:
    """Count a message by the text of its content and other parts by their JSON."""
    if not isinstance(message, dict):
        return count_json_tokens(message)
    content = message.get("content")
    if isinstance(content, str):
        return count_tokens(content)
    if not isinstance(content, list):
        return count_json_tokens(content) if content is not None else 0
    tokens = 0
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            tokens += count_tokens(content_text([part]))
        else:
            tokens += count_json_tokens(part)
    return tokens


def count_prompt(
    body: dict[str, object], messages: list[object], ctx: SimContext, mode: str
) -> PromptTokens:
    """Count prompt tokens. The tools and every message but the last are cacheable."""
    tools = body.get("tools")
    tool_tokens = count_json_tokens(tools) if tools else 0
    sizes = [message_tokens(message) for message in messages]
    prefix = tool_tokens + sum(sizes[:-1])
    total = prefix + sizes[-1]
    seen = False
    if mode == "auto" and prefix > 0:
        seen = ctx.state.mark_prefix_seen(
            request_seed([body.get("model"), tools, messages[:-1]])
        )
    # OpenAI reports only cache reads, so "write" mode reports no cached tokens.
    if mode == "write":
        mode = "none"
    return split_cached(total, prefix, mode, seen)


def read_request_controls(
    request: web.Request, ctx: SimContext, messages: list[object]
) -> RequestControls:
    try:
        return read_controls(ctx.defaults, request.headers, last_user_text(messages))
    except ControlError as error:
        raise ApiError(400, str(error)) from None


def plan_chat(
    body: dict[str, object], ctx: SimContext, request: web.Request, request_id: str
) -> ChatPlan:
    model = validate_model(body)
    messages = validate_messages(body)
    max_tokens = validate_max_tokens(body)
    controls = read_request_controls(request, ctx, messages)
    seed_fields = {k: v for k, v in body.items() if k not in EXCLUDED_FROM_SEED}
    completion = generate(
        request_seed(seed_fields),
        controls.output_tokens,
        max_tokens,
        stop_sequences(body),
    )
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and bool(
        stream_options.get("include_usage")
    )
    return ChatPlan(
        completion_id=ctx.new_id("chatcmpl-"),
        request_id=request_id,
        created=int(time.time()),
        model=model,
        stream=body.get("stream") is True,
        include_usage=include_usage,
        controls=controls,
        prompt=count_prompt(body, messages, ctx, controls.cache_mode),
        completion=completion,
        chunks=split_chunks(
            completion.text, ctx.settings.tokens_per_chunk, controls.chunks
        ),
    )


def usage(plan: ChatPlan) -> dict[str, object]:
    prompt_tokens = plan.prompt.total
    completion_tokens = plan.completion.output_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {
            "cached_tokens": plan.prompt.cache_read,
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def completion_body(plan: ChatPlan) -> dict[str, object]:
    message: dict[str, object] = {
        "role": "assistant",
        "content": plan.completion.text,
        "refusal": None,
        "annotations": [],
    }
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": FINISH_REASONS[plan.completion.stop],
    }
    return {
        "id": plan.completion_id,
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "choices": [choice],
        "usage": usage(plan),
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def response_headers(request_id: str) -> dict[str, str]:
    return {"x-request-id": request_id, "openai-version": "2020-10-01"}


def fault_headers(fault: str, retry_after_s: int) -> dict[str, str]:
    if not fault.startswith("rate_limit"):
        return {}
    kind = "tokens" if fault == "rate_limit_tokens" else "requests"
    return {
        "retry-after": str(retry_after_s),
        f"x-ratelimit-remaining-{kind}": "0",
        f"x-ratelimit-reset-{kind}": f"{retry_after_s}s",
    }


def status_fault(
    fault: str, model: str, prompt_tokens: int, retry_after_s: int
) -> tuple[ApiError, dict[str, str]]:
    status, error_type, code, param, template = STATUS_FAULTS[fault]
    message = template.format(
        model=model, prompt_tokens=prompt_tokens, retry_after=retry_after_s
    )
    error = ApiError(status, message, error_type, code, param)
    return error, fault_headers(fault, retry_after_s)


async def early_fault(
    request: web.Request,
    request_id: str,
    controls: RequestControls,
    model: str,
    prompt_tokens: int,
    stream: bool,
) -> web.StreamResponse | None:
    """Apply a fault that replaces the whole response, or return None."""
    fault = controls.fault
    if fault == "reset":
        faults.abort_connection(request)
        return web.Response()
    if fault == "timeout":
        await faults.hang(request, get_context(request).settings.hang_s)
        return web.Response()
    if fault == "stream_error" and not stream:
        fault = "overloaded"
    if fault not in STATUS_FAULTS:
        return None
    error, headers = status_fault(fault, model, prompt_tokens, controls.retry_after_s)
    return error_response(request_id, error, headers)


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    """Handle ``POST /v1/chat/completions``."""
    ctx = get_context(request)
    request_id = ctx.new_id("req_")
    try:
        check_auth(request, ctx)
        plan = plan_chat(await read_body(request), ctx, request, request_id)
    except ApiError as error:
        return error_response(request_id, error)
    controls = plan.controls
    if controls.fault is not None:
        early = await early_fault(
            request, request_id, controls, plan.model, plan.prompt.total, plan.stream
        )
        if early is not None:
            return early
    slow = controls.fault == "slow"
    await faults.sleep_ms(ctx.settings.slow_ms if slow else controls.ttfb_ms)
    if plan.stream:
        return await stream_chat(request, plan)
    return await send_chat(request, plan)


async def send_chat(request: web.Request, plan: ChatPlan) -> web.StreamResponse:
    """Send a non-streaming completion after the time its stream would take."""
    await faults.sleep_ms(plan.controls.chunk_ms * max(0, len(plan.chunks) - 1))
    body = orjson.dumps(completion_body(plan))
    fault = plan.controls.fault
    headers = response_headers(plan.request_id)
    if fault == "invalid_json":
        body = body[: len(body) // 2]
    if fault != "reset_mid_stream":
        return web.Response(body=body, content_type="application/json", headers=headers)
    response = web.StreamResponse(headers=headers)
    response.content_type = "application/json"
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    faults.abort_connection(request)
    return response


def chunk(plan: ChatPlan, delta: dict[str, object], finish: str | None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    payload: dict[str, object] = {
        "id": plan.completion_id,
        "object": "chat.completion.chunk",
        "created": plan.created,
        "model": plan.model,
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [choice],
    }
    if plan.include_usage:
        payload["usage"] = None
    return sse_data(payload)


async def stream_chat(request: web.Request, plan: ChatPlan) -> web.StreamResponse:
    """Send the completion as ``data:`` chunks ending with ``data: [DONE]``."""
    response = await start_stream(request, response_headers(plan.request_id))
    first: dict[str, object] = {"role": "assistant", "content": "", "refusal": None}
    await response.write(chunk(plan, first, None))
    completed = await stream_deltas(request, response, plan)
    if not completed:
        return response
    finish = FINISH_REASONS[plan.completion.stop]
    await response.write(chunk(plan, {}, finish))
    if plan.include_usage:
        await response.write(usage_chunk(plan))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def usage_chunk(plan: ChatPlan) -> bytes:
    return sse_data(
        {
            "id": plan.completion_id,
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": plan.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [],
            "usage": usage(plan),
        }
    )


async def stream_deltas(
    request: web.Request, response: web.StreamResponse, plan: ChatPlan
) -> bool:
    """Send the content deltas, returning False when a fault ended the stream."""
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
        await response.write(chunk(plan, {"content": plan.chunks[index]}, None))
    return True


async def send_stream_fault(
    request: web.Request, response: web.StreamResponse, plan: ChatPlan
) -> None:
    fault = plan.controls.fault
    if fault == "reset_mid_stream":
        faults.abort_connection(request)
        return
    if fault == "invalid_json":
        await response.write(
            b'data: {"id": "' + plan.completion_id.encode() + b'", "obj\n\n'
        )
    else:
        status, error_type, code, param, message = STREAM_ERROR
        error = ApiError(status, message, error_type, code, param)
        await response.write(sse_data(error.body()))
    await response.write_eof()


def embedding_inputs(body: dict[str, object]) -> list[object]:
    """Return the inputs as a list of strings or token-id lists."""
    value = body.get("input")
    if value is None:
        raise ApiError(
            400,
            "Missing required parameter: 'input'.",
            code="missing_required_parameter",
            param="input",
        )
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [value]
    if isinstance(value, list) and value:
        return value
    raise ApiError(
        400,
        "'$.input' is invalid. Please check the API reference: "
        "https://platform.openai.com/docs/api-reference.",
        param="input",
    )


def embedding_item(index: int, item: object, dimensions: int, encoding: str) -> dict:
    text = item if isinstance(item, str) else orjson.dumps(item).decode()
    values = embedding_vector(text, dimensions)
    vector: object = values
    if encoding == "base64":
        vector = base64.b64encode(array.array("f", values).tobytes()).decode()
    return {"object": "embedding", "index": index, "embedding": vector}


def input_tokens(item: object) -> int:
    if isinstance(item, str):
        return count_tokens(item)
    return len(item) if isinstance(item, list) else 0


async def create_embeddings(request: web.Request) -> web.StreamResponse:
    """Handle ``POST /v1/embeddings``."""
    ctx = get_context(request)
    request_id = ctx.new_id("req_")
    try:
        check_auth(request, ctx)
        body = await read_body(request)
        model = validate_model(body)
        inputs = embedding_inputs(body)
        controls = read_controls(ctx.defaults, request.headers, "")
    except ControlError as error:
        return error_response(request_id, ApiError(400, str(error)))
    except ApiError as error:
        return error_response(request_id, error)

    tokens = sum(input_tokens(item) for item in inputs)
    if controls.fault is not None:
        early = await early_fault(request, request_id, controls, model, tokens, False)
        if early is not None:
            return early

    await faults.sleep_ms(controls.ttfb_ms)
    payload = embeddings_payload(body, model, inputs, tokens, ctx)
    return json_response(payload, headers=response_headers(request_id))


def embeddings_payload(
    body: dict[str, object],
    model: str,
    inputs: list[object],
    tokens: int,
    ctx: SimContext,
) -> dict[str, object]:
    dimensions = body.get("dimensions")
    if not isinstance(dimensions, int) or dimensions < 1:
        dimensions = ctx.settings.embedding_dimensions
    encoding = "base64" if body.get("encoding_format") == "base64" else "float"
    data = [
        embedding_item(index, item, dimensions, encoding)
        for index, item in enumerate(inputs)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def model_object(model: tuple[str, int, str]) -> dict[str, object]:
    model_id, created, owned_by = model
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


async def list_models(request: web.Request) -> web.Response:
    """Handle ``GET /v1/models``."""
    ctx = get_context(request)
    request_id = ctx.new_id("req_")
    try:
        check_auth(request, ctx)
    except ApiError as error:
        return error_response(request_id, error)
    payload = {"object": "list", "data": [model_object(model) for model in MODELS]}
    return json_response(payload, headers=response_headers(request_id))


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
            return json_response(
                model_object(model), headers=response_headers(request_id)
            )
    missing = ApiError(
        404,
        f"The model '{model_id}' does not exist",
        code="model_not_found",
        param="model",
    )
    return error_response(request_id, missing)
