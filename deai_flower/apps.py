"""Flower's entry points: the module-level apps ``flwr run`` and every engine run.

``[tool.flwr.app.components]`` in pyproject.toml names them; ``deai-flower`` runs the
very same objects on the in-process engine or on Ray.
"""

from .participant.app import client_app
from .server_app import server_app

__all__ = ["client_app", "server_app"]
