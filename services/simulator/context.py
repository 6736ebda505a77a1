"""Shared per-app objects of the simulator: settings, state and id generation."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

from aiohttp import web

from .controls import RequestControls
from .recorder import SimState
from .settings import SimSettings


@dataclass(slots=True)
class SimContext:
    """Everything a handler needs besides the request."""

    settings: SimSettings
    state: SimState
    defaults: RequestControls = field(init=False)
    _run_id: str = field(init=False)
    _counter: itertools.count[int] = field(init=False)

    def __post_init__(self) -> None:
        self.defaults = RequestControls.defaults(self.settings)
        self._run_id = os.urandom(4).hex()
        self._counter = itertools.count(1)

    def new_id(self, prefix: str) -> str:
        """Return an id unique within this process, such as ``msg_sim1a2b3c4d0001``."""
        return f"{prefix}sim{self._run_id}{next(self._counter):08x}"


CONTEXT_KEY = web.AppKey("simulator_context", SimContext)


def get_context(request: web.Request) -> SimContext:
    return request.app[CONTEXT_KEY]
