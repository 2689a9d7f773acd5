"""Flower starts a ClientApp process for every message a deployed silo gets; one that
answers an identity query must not pay for torch, Opacus and web3 (about 4 s of CPU)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "opacus", "web3", "scipy")


def test_the_clientapp_and_its_identity_handler_load_without_the_ml_stack() -> None:
    probe = (
        "import sys\n"
        "from deai_flower.apps import client_app\n"
        "from deai_flower.participant import Participant, handle_identity\n"
        "from deai_flower.chain import keystore_key\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout


def test_the_lazy_packages_still_export_every_name() -> None:
    import deai_flower.apps
    import deai_flower.chain
    import deai_flower.participant

    for package in (deai_flower.apps, deai_flower.chain, deai_flower.participant):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
