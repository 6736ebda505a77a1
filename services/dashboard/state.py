"""What the dashboard handlers share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from aiohttp import web

from services.common.config import GatewayConfig
from services.dashboard.backend import Backend
from services.dashboard.settings import DashboardSettings


@dataclass(slots=True)
class DashboardState:
    KEY: ClassVar[web.AppKey[DashboardState]]

    settings: DashboardSettings
    config: GatewayConfig
    backend: Backend


DashboardState.KEY = web.AppKey("dashboard_state", DashboardState)


def state_of(request: web.Request) -> DashboardState:
    return request.config_dict[DashboardState.KEY]
