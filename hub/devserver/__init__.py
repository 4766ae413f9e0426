"""Real peers for the test-suite and ``hub demo``: a local Synapse and an SMTP sink; and a
recording proxy to put in front of the homeserver (tests and benchmarks count through it).

Nothing here is used by ``hub run``. The submodules need the ``test``/``demo``
extras (matrix-synapse, aiosmtpd), so they are imported lazily: importing
``hub.devserver.synapse`` must not require aiosmtpd, and ``python -m
hub.devserver.smtp`` must not find its own module already imported by this package.
"""

from __future__ import annotations

import importlib
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hub.devserver.proxy import Exchange, RecordingProxy
    from hub.devserver.smtp import FaultHook, ReceivedMail, SmtpSink
    from hub.devserver.synapse import RegisteredUser, SynapseError, SynapseServer

__all__ = [
    "Exchange",
    "FaultHook",
    "ReceivedMail",
    "RecordingProxy",
    "RegisteredUser",
    "SmtpSink",
    "SynapseError",
    "SynapseServer",
    "free_port",
]

_LAZY = {
    "Exchange": "hub.devserver.proxy",
    "RecordingProxy": "hub.devserver.proxy",
    "FaultHook": "hub.devserver.smtp",
    "ReceivedMail": "hub.devserver.smtp",
    "SmtpSink": "hub.devserver.smtp",
    "RegisteredUser": "hub.devserver.synapse",
    "SynapseError": "hub.devserver.synapse",
    "SynapseServer": "hub.devserver.synapse",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    Servers here pick their port once, at construction, so that stopping and
    restarting them keeps the same address. There is a race between closing this
    socket and the server binding the port, but the kernel hands out ephemeral
    ports round-robin, so a collision within a test run is very unlikely.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
