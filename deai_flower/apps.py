"""Flower's entry points: the module-level apps ``flwr run`` and every engine run.

``[tool.flwr.app.components]`` in pyproject.toml names them; ``deai-flower`` runs the
very same objects on the in-process engine or on Ray. Each is imported on first use
(PEP 562): a silo's ClientApp process, started by Flower for every message, never loads
the coordinator's side.
"""

import warnings
from typing import TYPE_CHECKING

from .lazy import lazy_exports

if TYPE_CHECKING:
    from .participant.app import client_app
    from .server_app import server_app

_WHERE = {"client_app": ".participant.app", "server_app": ".server_app"}

__all__ = ["client_app", "server_app"]

# Flower's simulation runtime loads these apps before it starts Ray, whose start then warns
# about a future default for GPU visibility: nothing a user of a run can act on.
warnings.filterwarnings("ignore", message="Tip: In future versions of Ray, Ray will no longer override accelerator",
                        category=FutureWarning)  # fmt: skip

__getattr__ = lazy_exports(globals(), _WHERE)
