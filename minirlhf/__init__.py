"""minirlhf: the ChatGPT recipe from scratch in NumPy.

Pretraining a GPT, supervised fine-tuning, a pairwise-ranking reward model and PPO with
a per-token KL penalty, with hand-derived backprop checked against finite differences.
"""
import os

# One level of threads: minirlhf splits its own work between the cores (kernels.py), so
# BLAS runs single-threaded. Two pools competing for the same cores is the slowest
# case of all (see kernels.py). Only effective before NumPy is first imported, and
# never overrides a value the user set.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from minirlhf.model import GPT, GPTConfig  # noqa: E402

__all__ = ["GPT", "GPTConfig"]
__version__ = "0.1.0"
