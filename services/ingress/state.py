"""What the ingress handlers share: settings, configuration and clients."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import ClassVar

import aiohttp
from aiohttp import web

from services.common.config import GatewayConfig
from services.ingress.events import EventSender
from services.ingress.fallback_limits import LocalLimiter
from services.ingress.policy_client import PolicyClient
from services.ingress.settings import IngressSettings


@dataclass(slots=True)
class IngressState:
    KEY: ClassVar[web.AppKey[IngressState]]

    settings: IngressSettings
    config: GatewayConfig
    session: aiohttp.ClientSession
    policy: PolicyClient
    events: EventSender
    # Request limits applied by this replica while calls are admitted
    # fail-open.
    fallback_limiter: LocalLimiter | None = None
    # Settle calls still running, kept so that they are not collected.
    settle_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # StoreCacheEntry calls in flight, referenced until they finish.
    cache_tasks: set[asyncio.Task[None]] = field(default_factory=set)


IngressState.KEY = web.AppKey("ingress_state", IngressState)
