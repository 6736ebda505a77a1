"""Case selection and the request bodies of the benchmark workload."""

from __future__ import annotations

import orjson
import pytest

from bench import cases


def test_select_cases_all_and_by_words() -> None:
    assert cases.select_cases("all") == cases.ALL_CASES
    assert len(cases.ALL_CASES) == 8
    chosen = cases.select_cases("anthropic json")
    assert {c.load for c in chosen} == {"rate", "concurrency"}
    assert {(c.provider, c.mode) for c in chosen} == {("anthropic", "json")}
    assert len(cases.select_cases("rate,sse")) == 6


def test_select_cases_rejects_a_filter_that_matches_nothing() -> None:
    with pytest.raises(ValueError, match="matches no case"):
        cases.select_cases("gemini")


def test_bodies_carry_a_two_kilobyte_system_prompt_and_several_turns() -> None:
    anthropic = orjson.loads(cases.anthropic_body(stream=True))
    openai = orjson.loads(cases.openai_body(stream=True))
    assert 1900 <= len(anthropic["system"]) <= 2400
    assert len(anthropic["messages"]) == 5
    assert anthropic["stream"] is True
    assert openai["messages"][0]["role"] == "system"
    assert openai["stream_options"] == {"include_usage": True}
    assert "stream_options" not in orjson.loads(cases.openai_body(stream=False))


def test_end_markers_name_the_last_event_of_each_stream() -> None:
    sse = [c for c in cases.ALL_CASES if c.stream]
    markers = {c.provider: cases.end_marker(c) for c in sse}
    assert markers == {"anthropic": b"message_stop", "openai": b"[DONE]"}
