"""Provider simulator: a stand-in for the Anthropic and OpenAI HTTP APIs.

See docs/simulator.md for the headers, prompt markers and token rules.
"""

from .app import build_app, get_state
from .recorder import RecordedRequest, SimState
from .server import SimulatorServer, ThreadedSimulator
from .settings import SimSettings

__all__ = [
    "RecordedRequest",
    "SimSettings",
    "SimState",
    "SimulatorServer",
    "ThreadedSimulator",
    "build_app",
    "get_state",
]
