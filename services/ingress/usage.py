"""Extract model, usage, stop reason and errors from provider responses.

Token counts follow one convention for every provider: ``input_tokens`` are
the input tokens billed at the full input price, so they exclude cache reads
and cache writes. Anthropic reports them that way. OpenAI's
``prompt_tokens`` include ``cached_tokens``, which are subtracted here so
that no token is counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from services.ingress.sse import SseParser


@dataclass(slots=True)
class CallOutcome:
    """What the response said about the call, filled as the bytes pass."""

    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    stop_reason: str = ""
    # Provider error type from an error body or an error event in a stream.
    error_type: str = ""
    error_message: str = ""
    # Monotonic nanoseconds when the first output token arrived; 0 if none.
    first_token_ns: int = 0
    # True once a stream reached its end marker (message_stop or [DONE]).
    complete: bool = False
    # Content events streamed, a lower bound of the output tokens of a
    # stream that ended before its final usage.
    delta_events: int = 0


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def apply_anthropic_usage(outcome: CallOutcome, usage: Any) -> None:
    """Apply an Anthropic usage object; later values of a field replace earlier."""
    if not isinstance(usage, dict):
        return
    if "input_tokens" in usage:
        outcome.input_tokens = _int(usage["input_tokens"])
    if "output_tokens" in usage:
        outcome.output_tokens = _int(usage["output_tokens"])
    if "cache_read_input_tokens" in usage:
        outcome.cache_read_tokens = _int(usage["cache_read_input_tokens"])
    if "cache_creation_input_tokens" in usage:
        outcome.cache_write_tokens = _int(usage["cache_creation_input_tokens"])


def apply_openai_usage(outcome: CallOutcome, usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    outcome.cache_read_tokens = cached
    outcome.input_tokens = max(_int(usage.get("prompt_tokens")) - cached, 0)
    outcome.output_tokens = _int(usage.get("completion_tokens"))


def apply_error(outcome: CallOutcome, body: Any) -> None:
    """Record the error of a provider error body (either provider's shape)."""
    if not isinstance(body, dict):
        return
    error = body.get("error")
    if not isinstance(error, dict):
        return
    outcome.error_type = str(error.get("type") or error.get("code") or "error")
    outcome.error_message = str(error.get("message", ""))[:1000]


def parse_json_response(wire_format: str, body: bytes) -> CallOutcome:
    """Read the outcome of a complete JSON response."""
    outcome = CallOutcome()
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return outcome
    if not isinstance(value, dict):
        return outcome
    if "error" in value:
        apply_error(outcome, value)
        return outcome
    outcome.model = str(value.get("model", ""))
    if wire_format == "anthropic":
        apply_anthropic_usage(outcome, value.get("usage"))
        outcome.stop_reason = str(value.get("stop_reason") or "")
    else:
        apply_openai_usage(outcome, value.get("usage"))
        choices = value.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            outcome.stop_reason = str(choices[0].get("finish_reason") or "")
    return outcome


class StreamObserver:
    """Watch an SSE response pass and fill a :class:`CallOutcome`.

    Only events that carry the model, usage, the stop reason or an error are
    decoded as JSON; content deltas are recognised without decoding them.
    """

    def __init__(self, wire_format: str) -> None:
        self.outcome = CallOutcome()
        self._parser = SseParser()
        self._anthropic = wire_format == "anthropic"
        # Whether the final usage arrived, for the estimate of a stream that
        # was cut off (the content events seen are in outcome.delta_events).
        self.final_usage_seen = False

    def feed(self, chunk: bytes, now_ns: int) -> None:
        for event in self._parser.feed(chunk):
            self._observe(event.event, event.data, now_ns)

    def close(self, now_ns: int) -> None:
        for event in self._parser.close():
            self._observe(event.event, event.data, now_ns)

    def _observe(self, name: str, data: str, now_ns: int) -> None:
        if self._anthropic:
            self._observe_anthropic(name, data, now_ns)
        else:
            self._observe_openai(data, now_ns)

    def _observe_anthropic(self, name: str, data: str, now_ns: int) -> None:
        outcome = self.outcome
        if name == "content_block_delta":
            outcome.delta_events += 1
            if not outcome.first_token_ns:
                outcome.first_token_ns = now_ns
            return
        if name not in ("message_start", "message_delta", "message_stop", "error"):
            return
        if name == "message_stop":
            outcome.complete = True
            return
        value = _loads(data)
        if name == "error":
            apply_error(outcome, value)
            return
        if name == "message_start":
            message = value.get("message", {})
            if isinstance(message, dict):
                outcome.model = str(message.get("model", ""))
                apply_anthropic_usage(outcome, message.get("usage"))
            return
        delta = value.get("delta")
        if isinstance(delta, dict) and delta.get("stop_reason"):
            outcome.stop_reason = str(delta["stop_reason"])
        if value.get("usage"):
            self.final_usage_seen = True
        apply_anthropic_usage(outcome, value.get("usage"))

    def _observe_openai(self, data: str, now_ns: int) -> None:
        outcome = self.outcome
        if data == "[DONE]":
            outcome.complete = True
            return
        outcome.delta_events += 1
        needs_token = not outcome.first_token_ns
        carries_fields = (
            not outcome.model
            or '"usage":{' in data
            or '"usage": {' in data
            or '"finish_reason":"' in data
            or '"finish_reason": "' in data
            or '"error"' in data
        )
        if not (needs_token or carries_fields):
            return
        value = _loads(data)
        if "error" in value:
            apply_error(outcome, value)
            return
        if not outcome.model and value.get("model"):
            outcome.model = str(value["model"])
        if value.get("usage"):
            self.final_usage_seen = True
            apply_openai_usage(outcome, value["usage"])
        choices = value.get("choices")
        if not isinstance(choices, list) or not choices:
            return
        choice = choices[0] if isinstance(choices[0], dict) else {}
        delta = choice.get("delta")
        if (
            needs_token
            and isinstance(delta, dict)
            and (
                delta.get("content") or delta.get("tool_calls") or delta.get("refusal")
            )
        ):
            outcome.first_token_ns = now_ns
        if choice.get("finish_reason"):
            outcome.stop_reason = str(choice["finish_reason"])


def estimate_cut_off_output(observer: StreamObserver) -> bool:
    """Estimate output tokens of a stream that ended before its final usage.

    The estimate is the number of content events seen (each carries at least
    one token), so it is a lower bound. Returns True when it replaced the
    reported count.
    """
    outcome = observer.outcome
    if observer.final_usage_seen or outcome.delta_events <= outcome.output_tokens:
        return False
    outcome.output_tokens = outcome.delta_events
    return True


def _loads(data: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
