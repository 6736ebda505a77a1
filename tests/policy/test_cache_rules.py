"""Cache rules: the gateway table, rule checks and the most specific rule."""

from __future__ import annotations

from gateway.policy.v1 import policy_pb2
from services.policy import cache_rules
from services.policy.cache_rules import EffectiveRule


def _parse(table: object) -> tuple[cache_rules.GatewayCacheConfig, list[str]]:
    problems: list[str] = []
    return cache_rules.parse_cache_table(table, "cache", problems), problems


def test_table_absent_disables_cache() -> None:
    config, problems = _parse(None)
    assert problems == []
    assert config.defaults.enabled is False


def test_table_read_fully() -> None:
    config, problems = _parse(
        {
            "enabled": True,
            "ttl_s": 30,
            "max_entry_bytes": 1000,
            "ignore_fields": ["metadata"],
            "shared": True,
            "lock_wait_ms": 0,
            "lock_ttl_ms": 1000,
        }
    )
    assert problems == []
    assert config.defaults == EffectiveRule(
        enabled=True,
        ttl_s=30,
        max_entry_bytes=1000,
        ignore_fields=frozenset({"metadata"}),
        shared=True,
    )
    assert config.lock_wait_ms == 0
    assert config.lock_ttl_ms == 1000


def test_table_problems_all_reported() -> None:
    _, problems = _parse(
        {
            "enabled": "yes",
            "ttl_s": 0,
            "max_entry_bytes": True,
            "ignore_fields": "metadata",
            "colour": 1,
        }
    )
    assert len(problems) == 5
    assert "cache.colour: unknown setting" in problems


def _rule(**fields: object) -> policy_pb2.CacheRule:
    scope = policy_pb2.Scope(account_id="a", gateway_id="g")
    return policy_pb2.CacheRule(scope=scope, **fields)  # type: ignore[arg-type]


def test_rule_problems() -> None:
    assert cache_rules.rule_problems(_rule(ttl_s=5)) == []
    assert len(cache_rules.rule_problems(_rule(ttl_s=-1))) == 1
    assert len(cache_rules.rule_problems(_rule(max_entry_bytes=1 << 40))) == 1
    assert len(cache_rules.rule_problems(_rule(ignore_fields=[""]))) == 1
    assert len(cache_rules.rule_problems(policy_pb2.CacheRule())) == 1


def test_rule_field_prefers_user() -> None:
    scope = policy_pb2.Scope(account_id="a", gateway_id="g", team_id="t")
    assert cache_rules.rule_field(scope) == "team:t"
    scope.user_id = "u"
    assert cache_rules.rule_field(scope) == "user:u"
    assert cache_rules.rule_field(policy_pb2.Scope()) == "gateway"


def test_most_specific_rule_wins_with_defaults() -> None:
    defaults = EffectiveRule(enabled=True, ttl_s=300, max_entry_bytes=99)
    user = _rule(enabled=False)
    user.scope.user_id = "u"
    team = _rule(enabled=True, ttl_s=7)
    team.scope.team_id = "t"

    assert cache_rules.effective_rule(defaults, [None, None, None]) == defaults
    from_team = cache_rules.effective_rule(defaults, [None, team, None])
    assert from_team.ttl_s == 7
    assert from_team.max_entry_bytes == 99
    assert from_team.source == "team:t"
    from_user = cache_rules.effective_rule(defaults, [user, team, None])
    assert from_user.enabled is False
    assert from_user.ttl_s == 300
    assert from_user.source == "user:u"


def test_rule_message_names_source() -> None:
    rule = EffectiveRule(enabled=True, source="user:u")
    message = cache_rules.rule_message(rule, "a", "g")
    assert message.scope.user_id == "u"
    assert message.enabled is True
