"""DP-SGD warns nothing a user cannot act on, also while clients train side by side."""

from __future__ import annotations

import threading
import warnings

import numpy as np

from deai_flower.privacy import PrivacyLedger
from unit.privacy._support import train


def test_clients_training_side_by_side_warn_nothing_about_opacus_hooks(data: tuple[np.ndarray, np.ndarray]) -> None:
    """PyTorch's "Full backward hook is firing ..." on every Opacus backward pass is
    silenced where the model is built (deai_flower.models, on import) and, for the suite,
    in pyproject's filterwarnings (pytest restores each test's filters, dropping the
    import-time one). The in-process engine trains each client in a thread of its own,
    and a ``warnings.catch_warnings()`` in one thread restores the filters another relies
    on: here five clients train at once under exactly the filters a test gets."""
    failures: list[BaseException] = []

    def client(seed: int) -> None:
        try:
            train(data, PrivacyLedger(), seed=seed)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)

    with warnings.catch_warnings(record=True) as seen:
        threads = [threading.Thread(target=client, args=(seed,)) for seed in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not failures, failures
    assert [str(w.message)[:80] for w in seen if "backward hook" in str(w.message)] == []
