"""The ``tollgate`` admin command: gateway keys, stored provider keys, limits
and caching rules.

It calls PolicyAdminService at ``--policy`` (default ``TOLLGATE_POLICY_ADDRESS``
or 127.0.0.1:50051), sending ``TOLLGATE_ADMIN_TOKEN`` as the gRPC metadata
``authorization: Bearer <token>`` when it is set. Provider keys are read from
standard input or a prompt, never from the command line, where they would
land in the shell history and the process list.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import grpc

from gateway.policy.v1 import policy_pb2, policy_pb2_grpc
from services import cli_limits

DEFAULT_POLICY_ADDRESS = "127.0.0.1:50051"
RPC_TIMEOUT_S = 10.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollgate", description=__doc__)
    parser.add_argument(
        "--policy",
        default=os.environ.get("TOLLGATE_POLICY_ADDRESS", DEFAULT_POLICY_ADDRESS),
        help="host:port of the policy service (default: %(default)s)",
    )
    groups = parser.add_subparsers(dest="group", required=True)

    keys = groups.add_parser("keys", help="gateway keys").add_subparsers(
        dest="command", required=True
    )
    create = keys.add_parser("create", help="issue a gateway key; prints it once")
    create.add_argument("--user", required=True, help="user id the key belongs to")
    create.add_argument("--team", default="", help="team id")
    create.add_argument("--project", default="", help="project id")
    create.add_argument(
        "--gateway",
        action="append",
        default=[],
        metavar="ACCOUNT/GATEWAY",
        help="gateway the key is valid on; repeat for several (default: all)",
    )
    create.add_argument("--description", default="", help="free text for operators")
    listing = keys.add_parser("list", help="list gateway keys")
    listing.add_argument("--user", default="", help="only this user's keys")
    listing.add_argument(
        "--all", action="store_true", help="include revoked keys as well"
    )
    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    rotate = keys.add_parser("rotate", help="issue a new key and revoke the old one")
    rotate.add_argument("key_id")

    provider = groups.add_parser(
        "provider-keys", help="provider keys stored for a gateway"
    ).add_subparsers(dest="command", required=True)
    for name, text in (
        ("put", "store a provider key read from stdin or a prompt"),
        ("delete", "delete a stored provider key"),
    ):
        command = provider.add_parser(name, help=text)
        _add_scope_arguments(command)
        command.add_argument("--provider", required=True, help="for example anthropic")
    listing = provider.add_parser("list", help="list stored provider keys")
    listing.add_argument("--account", required=True)
    listing.add_argument("--gateway", required=True)
    cli_limits.add_commands(groups)
    return parser


def _add_scope_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--account", required=True)
    command.add_argument("--gateway", required=True)
    owner = command.add_mutually_exclusive_group()
    owner.add_argument("--team", default="", help="store for one team")
    owner.add_argument("--user", default="", help="store for one user")


def _scope(args: argparse.Namespace) -> policy_pb2.Scope:
    return policy_pb2.Scope(
        account_id=args.account,
        gateway_id=args.gateway,
        team_id=args.team,
        user_id=args.user,
    )


def read_secret(stdin: TextIO) -> str:
    """Read the provider key from a pipe, or prompt for it without echo."""
    if stdin.isatty():
        return getpass.getpass("provider key: ").strip()
    return stdin.readline().strip()


def _when(ms: int) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def format_key(record: policy_pb2.KeyRecord) -> str:
    state = (
        f"revoked {_when(record.revoked_at_ms)}" if record.revoked_at_ms else "active"
    )
    gateways = ",".join(record.gateways) or "*"
    return (
        f"{record.key_id}  {record.prefix}...  user={record.user_id} "
        f"team={record.team_id or '-'} project={record.project_id or '-'} "
        f"gateways={gateways} created={_when(record.created_at_ms)} {state}"
    )


def format_provider_key(record: policy_pb2.ProviderKeyRecord) -> str:
    scope = record.scope
    owner = (
        f"user={scope.user_id}"
        if scope.user_id
        else (f"team={scope.team_id}" if scope.team_id else "gateway-wide")
    )
    return (
        f"{scope.account_id}/{scope.gateway_id}  {record.provider}  {owner}  "
        f"...{record.hint or '????'}  created={_when(record.created_at_ms)}"
    )


def run(args: argparse.Namespace, stub: Any, out: TextIO, stdin: TextIO) -> int:
    """Run one parsed command against a PolicyAdminService stub."""
    metadata = _metadata()

    def call(method: str, request: Any) -> Any:
        return getattr(stub, method)(request, timeout=RPC_TIMEOUT_S, metadata=metadata)

    if args.group == "keys":
        return _run_keys(args, call, out)
    if args.group == "limits":
        return cli_limits.run_limits(args, call, out)
    if args.group == "cache-rules":
        return cli_limits.run_cache_rules(args, call, out)
    if args.command == "put":
        secret = read_secret(stdin)
        if not secret:
            print("error: no provider key given on stdin", file=sys.stderr)
            return 2
        request = policy_pb2.PutProviderKeyRequest(
            scope=_scope(args), provider=args.provider, secret=secret
        )
        print(format_provider_key(call("PutProviderKey", request).key), file=out)
        return 0
    if args.command == "delete":
        request = policy_pb2.DeleteProviderKeyRequest(
            scope=_scope(args), provider=args.provider
        )
        deleted = call("DeleteProviderKey", request).deleted
        print("deleted" if deleted else "not found", file=out)
        return 0 if deleted else 1
    request = policy_pb2.ListProviderKeysRequest(
        account_id=args.account, gateway_id=args.gateway
    )
    for record in call("ListProviderKeys", request).keys:
        print(format_provider_key(record), file=out)
    return 0


def _run_keys(args: argparse.Namespace, call: Any, out: TextIO) -> int:
    if args.command == "create":
        response = call(
            "CreateKey",
            policy_pb2.CreateKeyRequest(
                user_id=args.user,
                team_id=args.team,
                project_id=args.project,
                gateways=args.gateway,
                description=args.description,
            ),
        )
    elif args.command == "rotate":
        response = call("RotateKey", policy_pb2.RotateKeyRequest(key_id=args.key_id))
    elif args.command == "revoke":
        response = call("RevokeKey", policy_pb2.RevokeKeyRequest(key_id=args.key_id))
        print(format_key(response.key), file=out)
        return 0
    else:
        request = policy_pb2.ListKeysRequest(
            user_id=args.user, include_revoked=args.all
        )
        for record in call("ListKeys", request).keys:
            print(format_key(record), file=out)
        return 0
    print(format_key(response.key), file=out)
    print(f"secret: {response.secret}", file=out)
    print("Store the secret now: it is not shown again.", file=sys.stderr)
    return 0


def _metadata() -> tuple[tuple[str, str], ...]:
    token = os.environ.get("TOLLGATE_ADMIN_TOKEN", "")
    return (("authorization", f"Bearer {token}"),) if token else ()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with grpc.insecure_channel(args.policy) as channel:
        stub = policy_pb2_grpc.PolicyAdminServiceStub(channel)
        try:
            return run(args, stub, sys.stdout, sys.stdin)
        except grpc.RpcError as exc:
            print(
                f"error: {exc.code().name}: {exc.details()}",  # type: ignore[attr-defined]
                file=sys.stderr,
            )
            return 1


if __name__ == "__main__":
    sys.exit(main())
