"""The tollgate command line: ``tollgate limits set|list|delete|status``.

NOTE: only the limit commands exist here so far; key and provider-key
commands belong to the identity work.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc

from gateway.policy.v1 import policy_pb2, policy_pb2_grpc
from services.policy import limits


def _limit(args: argparse.Namespace) -> policy_pb2.Limit:
    return policy_pb2.Limit(
        scope=policy_pb2.Scope(
            account_id=args.account,
            gateway_id=args.gateway,
            team_id=args.team or "",
            user_id=args.user or "",
        ),
        key_id=args.key or "",
        kind=limits.KIND_TO_PROTO[args.kind],
        limit=args.limit,
        window_s=args.window_s,
        applies_to=args.scope,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollgate")
    parser.add_argument(
        "--policy",
        default=os.environ.get("TOLLGATE_POLICY_ADDRESS", "127.0.0.1:50051"),
        help="address of the policy service, host:port",
    )
    area = parser.add_subparsers(dest="area", required=True)
    limit_parser = area.add_parser("limits", help="rate limits and budgets")
    command = limit_parser.add_subparsers(dest="command", required=True)
    for name in ("set", "delete"):
        sub = command.add_parser(name)
        sub.add_argument("account")
        sub.add_argument("gateway")
        sub.add_argument("--scope", choices=("gateway", "team", "user", "key"))
        sub.add_argument("--kind", choices=tuple(limits.KIND_TO_PROTO), required=True)
        sub.add_argument(
            "--limit",
            type=int,
            default=1,
            help="requests, tokens, micro-USD or in-flight calls per window",
        )
        sub.add_argument("--window-s", type=int, default=0, help="window in seconds")
        sub.add_argument("--team")
        sub.add_argument("--user")
        sub.add_argument("--key")
    for name in ("list", "status"):
        sub = command.add_parser(name)
        sub.add_argument("account")
        sub.add_argument("gateway")
        if name == "status":
            sub.add_argument("--user", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with grpc.insecure_channel(args.policy) as channel:
        admin = policy_pb2_grpc.PolicyAdminServiceStub(channel)
        try:
            if args.command == "set":
                response = admin.SetLimit(
                    policy_pb2.SetLimitRequest(limit=_limit(args)), timeout=10
                )
                print(response.limit)
            elif args.command == "delete":
                deleted = admin.DeleteLimit(
                    policy_pb2.DeleteLimitRequest(limit=_limit(args)), timeout=10
                )
                print("deleted" if deleted.deleted else "not found")
            elif args.command == "list":
                listed = admin.ListLimits(
                    policy_pb2.ListLimitsRequest(
                        account_id=args.account, gateway_id=args.gateway
                    ),
                    timeout=10,
                )
                for item in listed.limits:
                    subject = item.scope.user_id or item.scope.team_id or item.key_id
                    print(
                        f"{item.applies_to}\t{subject or '*'}\t"
                        f"{limits.PROTO_TO_KIND[item.kind]}\t{item.limit}\t"
                        f"{item.window_s}s\t{item.source}"
                    )
            else:
                status = admin.GetLimitStatus(
                    policy_pb2.GetLimitStatusRequest(
                        account_id=args.account,
                        gateway_id=args.gateway,
                        user_id=args.user,
                    ),
                    timeout=10,
                )
                for state in status.limits:
                    print(
                        f"{state.name}\t{state.remaining}/{state.limit} {state.unit}"
                        f" left\treset in {state.reset_s}s"
                    )
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
