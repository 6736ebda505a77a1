"""``tollgate limits ...`` and ``tollgate cache-rules ...``: runtime limits and
caching rules, through PolicyAdminService."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from gateway.policy.v1 import policy_pb2
from services.policy import limits


def add_commands(groups: Any) -> None:
    """Add the ``limits`` and ``cache-rules`` command groups to the parser."""
    limit_commands = groups.add_parser(
        "limits", help="rate limits, token limits and budgets"
    ).add_subparsers(dest="command", required=True)
    for name, text in (("set", "set a limit"), ("delete", "delete a limit")):
        command = limit_commands.add_parser(name, help=text)
        _gateway_arguments(command)
        command.add_argument("--scope", choices=("gateway", "team", "user", "key"))
        command.add_argument(
            "--kind", choices=tuple(limits.KIND_TO_PROTO), required=True
        )
        command.add_argument(
            "--limit",
            type=int,
            default=1,
            help="requests, tokens, micro-USD or in-flight calls per window",
        )
        command.add_argument("--window-s", type=int, default=0, help="seconds")
        command.add_argument("--team", default="")
        command.add_argument("--user", default="")
        command.add_argument("--key", default="")
    _gateway_arguments(limit_commands.add_parser("list", help="list the limits"))
    status = limit_commands.add_parser("status", help="a user's use of each limit")
    _gateway_arguments(status)
    status.add_argument("--user", required=True)

    rule_commands = groups.add_parser(
        "cache-rules", help="caching rules per gateway, team or user"
    ).add_subparsers(dest="command", required=True)
    rule = rule_commands.add_parser("set", help="set the rule of a scope")
    _rule_scope_arguments(rule)
    rule.add_argument("--disabled", action="store_true", help="turn caching off")
    rule.add_argument("--ttl-s", type=int, default=0, help="entry lifetime, seconds")
    rule.add_argument("--max-entry-bytes", type=int, default=0)
    rule.add_argument(
        "--ignore-field",
        action="append",
        default=[],
        help="top-level body field left out of the key (repeatable)",
    )
    rule.add_argument("--shared", action="store_true", help="share across users")
    show = rule_commands.add_parser("get", help="the rules that apply")
    _rule_scope_arguments(show)
    delete = rule_commands.add_parser("delete", help="delete the rule of a scope")
    _rule_scope_arguments(delete)


def _gateway_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--account", required=True)
    command.add_argument("--gateway", required=True)


def _rule_scope_arguments(command: argparse.ArgumentParser) -> None:
    _gateway_arguments(command)
    command.add_argument("--team", default="")
    command.add_argument("--user", default="")


def _scope(args: argparse.Namespace) -> policy_pb2.Scope:
    return policy_pb2.Scope(
        account_id=args.account,
        gateway_id=args.gateway,
        team_id=args.team,
        user_id=args.user,
    )


def _limit(args: argparse.Namespace) -> policy_pb2.Limit:
    return policy_pb2.Limit(
        scope=_scope(args),
        key_id=args.key,
        kind=limits.KIND_TO_PROTO[args.kind],
        limit=args.limit,
        window_s=args.window_s,
        applies_to=args.scope or "",
    )


def run_limits(args: argparse.Namespace, call: Any, out: TextIO) -> int:
    if args.command == "set":
        response = call("SetLimit", policy_pb2.SetLimitRequest(limit=_limit(args)))
        print(response.limit, file=out)
        return 0
    if args.command == "delete":
        request = policy_pb2.DeleteLimitRequest(limit=_limit(args))
        deleted = call("DeleteLimit", request).deleted
        print("deleted" if deleted else "not found", file=out)
        return 0 if deleted else 1
    if args.command == "list":
        request = policy_pb2.ListLimitsRequest(
            account_id=args.account, gateway_id=args.gateway
        )
        for item in call("ListLimits", request).limits:
            subject = item.scope.user_id or item.scope.team_id or item.key_id
            print(
                f"{item.applies_to}\t{subject or '*'}\t"
                f"{limits.PROTO_TO_KIND[item.kind]}\t{item.limit}\t"
                f"{item.window_s}s\t{item.source}",
                file=out,
            )
        return 0
    request = policy_pb2.GetLimitStatusRequest(
        account_id=args.account, gateway_id=args.gateway, user_id=args.user
    )
    for state in call("GetLimitStatus", request).limits:
        print(
            f"{state.name}\t{state.remaining}/{state.limit} {state.unit} left\t"
            f"reset in {state.reset_s}s",
            file=out,
        )
    return 0


def run_cache_rules(args: argparse.Namespace, call: Any, out: TextIO) -> int:
    if args.command == "set":
        rule = policy_pb2.CacheRule(
            scope=_scope(args),
            enabled=not args.disabled,
            ttl_s=args.ttl_s,
            max_entry_bytes=args.max_entry_bytes,
            ignore_fields=args.ignore_field,
            shared=args.shared,
        )
        response = call("SetCacheRule", policy_pb2.SetCacheRuleRequest(rule=rule))
        print(response.rule, file=out)
        return 0
    if args.command == "delete":
        request = policy_pb2.DeleteCacheRuleRequest(scope=_scope(args))
        deleted = call("DeleteCacheRule", request).deleted
        print("deleted" if deleted else "not found", file=out)
        return 0 if deleted else 1
    request = policy_pb2.GetCacheRulesRequest(
        account_id=args.account,
        gateway_id=args.gateway,
        team_id=args.team,
        user_id=args.user,
    )
    response = call("GetCacheRules", request)
    for item in response.rules:
        print(item, file=out)
    print(f"effective:\n{response.effective}", file=out)
    return 0
