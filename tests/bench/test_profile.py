"""Summaries of py-spy's collapsed stacks."""

from __future__ import annotations

import pytest

from bench import profile

MAIN = "main (app/__main__.py:10)"
HANDLE = "handle (services/ingress/proxy.py:40)"
CHECK = "_check (services/ingress/proxy.py:90)"
COLLAPSED = f"{MAIN};{HANDLE};{CHECK} 6\n{MAIN};{HANDLE} 3\n{MAIN} 1\n"


def test_parse_collapsed_shortens_paths_and_reads_counts() -> None:
    stacks = profile.parse_collapsed(COLLAPSED)
    assert stacks[0] == (
        ["main (__main__.py)", "handle (proxy.py)", "_check (proxy.py)"],
        6,
    )
    assert [count for _, count in stacks] == [6, 3, 1]


def test_top_costs_self_and_inclusive_shares() -> None:
    total, own, inclusive = profile.top_costs(profile.parse_collapsed(COLLAPSED))
    assert total == 10
    assert own[0] == ("_check (proxy.py)", pytest.approx(0.6))
    assert dict(inclusive)["handle (proxy.py)"] == pytest.approx(0.9)
    assert dict(inclusive)["main (__main__.py)"] == pytest.approx(1.0)
