"""The demo's traffic: a few users calling both providers through the SDKs."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import anthropic
import openai
import orjson

# (user, what the user's agent does). Each user sends a different mix.
USERS = (
    ("alice", "support triage"),
    ("bob", "code review"),
    ("carol", "report writing"),
    ("dave", "data extraction"),
    ("erin", "research assistant"),
)

SYSTEM_PROMPT = (
    "You are an assistant embedded in an agent that runs one task per user. "
    "Answer briefly and cite the ticket number when one is given. "
) * 6


@dataclass
class Outcome:
    ok: int = 0
    failed: int = 0


def _headers(
    user: str, run_id: str, output_tokens: int, fault: str = ""
) -> dict[str, str]:
    headers = {
        "cf-aig-metadata": orjson.dumps({"user": user, "demo_run": run_id}).decode(),
        # The simulator returns this many output tokens, for varied usage.
        "x-sim-output-tokens": str(output_tokens),
    }
    if fault:
        headers["x-sim-fault"] = fault
    return headers


async def _one_call(
    claude: anthropic.AsyncAnthropic,
    gpt: openai.AsyncOpenAI,
    user: str,
    task: str,
    run_id: str,
    number: int,
    rng: random.Random,
) -> bool:
    prompt = f"[{task}] ticket {number}: summarise the latest update for {user}."
    # One call in twelve fails upstream, so the summary shows errors too.
    fault = (
        rng.choice(("rate_limit", "overloaded", "server_error"))
        if (rng.random() < 1 / 12)
        else ""
    )
    headers = _headers(user, run_id, rng.randint(20, 150), fault)
    kind = rng.choice(("claude", "claude-stream", "gpt", "gpt-stream"))
    try:
        if kind == "claude":
            await claude.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=rng.randint(40, 160),
                system=SYSTEM_PROMPT,
                messages=[{"role": "user", "content": prompt}],
                extra_headers=headers,
            )
        elif kind == "claude-stream":
            async with claude.messages.stream(
                model="claude-haiku-4-5",
                max_tokens=rng.randint(40, 200),
                system=SYSTEM_PROMPT,
                messages=[{"role": "user", "content": prompt}],
                extra_headers=headers,
            ) as stream:
                await stream.get_final_message()
        elif kind == "gpt":
            await gpt.chat.completions.create(
                model="gpt-4o-mini",
                messages=[
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": prompt},
                ],
                extra_headers=headers,
            )
        else:
            chunks = await gpt.chat.completions.create(
                model="gpt-4o",
                stream=True,
                stream_options={"include_usage": True},
                messages=[
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": prompt},
                ],
                extra_headers=headers,
            )
            async for _ in chunks:
                pass
    except (anthropic.APIError, openai.APIError):
        return False
    return True


async def _user_session(
    base_url: str, user: str, task: str, run_id: str, calls: int, outcome: Outcome
) -> None:
    rng = random.Random(f"{run_id}-{user}")
    claude = anthropic.AsyncAnthropic(
        base_url=f"{base_url}/v1/demo/agents/anthropic",
        api_key=f"sk-ant-demo-{user}",
        max_retries=0,
    )
    gpt = openai.AsyncOpenAI(
        base_url=f"{base_url}/v1/demo/agents/openai/v1",
        api_key=f"sk-demo-{user}",
        max_retries=0,
    )
    try:
        for number in range(calls):
            if await _one_call(claude, gpt, user, task, run_id, number, rng):
                outcome.ok += 1
            else:
                outcome.failed += 1
            await asyncio.sleep(rng.uniform(0.0, 0.2))
    finally:
        await claude.close()
        await gpt.close()


async def send_mix(base_url: str, run_id: str, calls_per_user: int) -> Outcome:
    """Send the demo's calls for every user at once; return how they ended."""
    outcome = Outcome()
    await asyncio.gather(
        *(
            _user_session(base_url, user, task, run_id, calls_per_user, outcome)
            for user, task in USERS
        )
    )
    return outcome
