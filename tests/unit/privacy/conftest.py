"""Fixtures of the privacy tests."""

from __future__ import annotations

import numpy as np
import pytest

from deai_flower.data import load_dataset
from unit.privacy._support import ROWS


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    split = load_dataset("digits", seed=0)
    return split.x_train[:ROWS], split.y_train[:ROWS]
