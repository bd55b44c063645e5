"""Random draws for the toy world, all from an explicit `np.random.Generator`.

Nothing here touches global random state, so the same seed always gives the same
world. These helpers also avoid `Generator.choice` in inner loops: it re-checks its
probabilities on every call, which made generation several times slower.
"""
import numpy as np


def pick(rng, options):
    """One element of the sequence `options`, uniformly."""
    return options[rng.integers(len(options))]


def sample(rng, options, n):
    """n distinct elements of `options` in random order."""
    return [options[i] for i in rng.permutation(len(options))[:n]]


class Mix:
    """A weighted choice among keys: ``Mix({"plain": 0.55, "few-shot": 0.2}).draw(rng)``.

    Weights need not sum to one; they are normalised once, here.
    """

    def __init__(self, weights):
        self.keys = tuple(weights)
        cumulative = np.cumsum(np.array(tuple(weights.values()), dtype=float))
        self.cdf = cumulative / cumulative[-1]

    def draw(self, rng):
        return self.keys[int(np.searchsorted(self.cdf, rng.random(), side="right"))]
