"""Run the local stack in the foreground: ``python -m services.stack``.

``make run`` calls this. It starts Redis, ClickHouse, the policy service, the
analytics service and the ingress, prints the base URLs for the SDKs, and
stops everything on Ctrl-C or SIGTERM. Data stays in ``--data-dir``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from services.common.config import config_path_from_env, load_config
from services.stack.launcher import Stack, StackError, StackOptions

logger = logging.getLogger("services.stack")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.stack")
    parser.add_argument(
        "--data-dir", default="var", help="data and log folder (default: var)"
    )
    parser.add_argument(
        "--ingress-port", type=int, default=8080, help="HTTP port (default: 8080)"
    )
    parser.add_argument(
        "--policy-port", type=int, default=50051, help="gRPC port (default: 50051)"
    )
    parser.add_argument(
        "--analytics-port", type=int, default=50052, help="gRPC port (default: 50052)"
    )
    parser.add_argument(
        "--clickhouse-port",
        type=int,
        default=8123,
        help="port of the local ClickHouse development server (default: 8123)",
    )
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> StackOptions:
    return StackOptions(
        data_dir=Path(args.data_dir).resolve(),
        ingress_port=args.ingress_port,
        policy_port=args.policy_port,
        analytics_port=args.analytics_port,
        clickhouse_port=args.clickhouse_port,
        redis_url=os.environ.get("REDIS_URL", ""),
        clickhouse_url=os.environ.get("CLICKHOUSE_URL", ""),
        config_path=config_path_from_env(),
    )


def example_gateway(config_path: Path | None) -> str:
    """Return "account/gateway" of the gateway to show in the printed URLs.

    The default gateway of the short route when it exists, else the first
    configured one.
    """
    config = load_config(config_path)
    default = (config.default_account_id, config.default_gateway_id)
    if default in config.gateways:
        return "/".join(default)
    return "/".join(next(iter(config.gateways)))


def print_urls(stack: Stack) -> None:
    base = stack.ingress_url
    gateway = example_gateway(stack.options.config_path)
    print(
        f"""
Tollgate is running.

  Anthropic SDK:  ANTHROPIC_BASE_URL={base}/v1/{gateway}/anthropic
  OpenAI SDK:     OPENAI_BASE_URL={base}/v1/{gateway}/openai/v1
  Short form:     {base}/anthropic  and  {base}/openai/v1
  Dashboard:      {base}/dashboard/
  Admin token:    {stack.admin_token}
  Policy gRPC:    {stack.policy_address}
  Analytics gRPC: {stack.analytics_address}
  Redis:          {stack.redis_url}
  ClickHouse:     {stack.clickhouse_url}
  Logs:           {stack.log_dir}

Press Ctrl-C to stop.
""",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    stack = Stack(options_from(parse_args(argv)))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        stack.start()
    except StackError as exc:
        logger.error("%s", exc)
        return 1
    print_urls(stack)
    try:
        while not stop.wait(1.0):
            for name, service in stack.services.items():
                if service.process is not None and service.process.poll() is not None:
                    logger.error(
                        "%s exited with code %s; stopping the stack (see %s)",
                        name,
                        service.process.returncode,
                        service.log_path,
                    )
                    stop.set()
                    break
    finally:
        print("stopping...", flush=True)
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
