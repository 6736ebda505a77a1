"""The tollgate CLI's limit and cache-rule commands against the running stack."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import anthropic

from tests.support.stack import ADMIN_TOKEN, RunningStack


def _cli(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TOLLGATE_ADMIN_TOKEN=ADMIN_TOKEN)
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "--policy", stack.policy_address, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_cli_limit_denies_next_call(stack: RunningStack) -> None:
    user = f"cli-limit-{uuid.uuid4().hex[:6]}"
    gateway = ("--account", "acme", "--gateway", "open")
    set_limit = _cli(
        stack,
        "limits",
        "set",
        *gateway,
        "--scope",
        "user",
        "--user",
        user,
        "--kind",
        "requests",
        "--limit",
        "1",
        "--window-s",
        "60",
    )
    client = anthropic.Anthropic(
        base_url=stack.anthropic_base_url(),
        api_key="sk-ant-cli",
        max_retries=0,
        default_headers={"cf-aig-metadata": f'{{"user": "{user}"}}'},
    )
    try:
        client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=8,
            messages=[{"role": "user", "content": "first"}],
        )
        try:
            client.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=8,
                messages=[{"role": "user", "content": "second"}],
            )
            denied = None
        except anthropic.RateLimitError as exc:
            denied = exc
    finally:
        client.close()
    listed = _cli(stack, "limits", "list", *gateway)
    status = _cli(stack, "limits", "status", *gateway, "--user", user)
    deleted = _cli(
        stack,
        "limits",
        "delete",
        *gateway,
        "--scope",
        "user",
        "--user",
        user,
        "--kind",
        "requests",
        "--limit",
        "1",
        "--window-s",
        "60",
    )

    assert set_limit.returncode == 0, set_limit.stderr
    assert denied is not None
    assert int(denied.response.headers["retry-after"]) >= 1
    assert user in listed.stdout
    assert "0/1 requests left" in status.stdout
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == "deleted"


def test_cli_cache_rule_roundtrip(stack: RunningStack) -> None:
    user = f"cli-cache-{uuid.uuid4().hex[:6]}"
    scope = ("--account", "acme", "--gateway", "cached", "--user", user)
    set_rule = _cli(
        stack,
        "cache-rules",
        "set",
        *scope,
        "--ttl-s",
        "120",
        "--ignore-field",
        "temperature",
    )
    shown = _cli(stack, "cache-rules", "get", *scope)
    deleted = _cli(stack, "cache-rules", "delete", *scope)
    missing = _cli(stack, "cache-rules", "delete", *scope)

    assert set_rule.returncode == 0, set_rule.stderr
    assert "ttl_s: 120" in shown.stdout
    assert "temperature" in shown.stdout
    assert deleted.stdout.strip() == "deleted"
    assert missing.returncode == 1
    assert missing.stdout.strip() == "not found"
