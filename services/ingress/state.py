"""What the ingress handlers share: settings, configuration and clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import aiohttp
from aiohttp import web

from services.common.config import GatewayConfig
from services.ingress.events import EventSender
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


IngressState.KEY = web.AppKey("ingress_state", IngressState)
