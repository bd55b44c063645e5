import numpy as np
import pytest


@pytest.fixture
def rng():
    """A fresh generator per test: every random draw in a test comes from here."""
    return np.random.default_rng(1234)
