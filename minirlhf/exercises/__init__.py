"""Classroom exercises: fill in a function, and a checker says precisely what is wrong.

The exercises are the notebooks in notebooks/exercises/ (the solutions, between
`### BEGIN SOLUTION` and `### END SOLUTION` markers); `minirlhf exercises --student DIR`
writes the copies students fill in. Each exercise has one checker here:

    from minirlhf.exercises import check_softmax_backward
    check_softmax_backward(softmax_backward)      # your function

A checker calls your function on fixed-seed, non-trivial float64 inputs and compares every
output with the reference code of minirlhf (layers.py, reward.py, ppo.py), and every
gradient with centred finite differences. It returns a `CheckResult`, whose repr (what a
notebook cell shows) lists each output's error beside the error a correct answer has:

    ✓ check_softmax_backward passed.
      dx: rel error 3.1e-11 (a correct answer here: ~3e-11 (the reference backward ...); allowed 1e-06)

or raises `ExerciseError` naming the output that is wrong, with its relative error
(norm-wise, see gradcheck.rel_error) and max abs difference, expected vs got around the
worst entry, where the wrong entries are, and a hint when the answer is one a known
mistake produces (a missing transpose, a loss normalised twice, the causal mask
forgotten...). A stub that still raises NotImplementedError gets "not implemented yet";
an exception from inside your code keeps its traceback.

  attention (the article's four steps, 01_attention.ipynb)
    check_qkv_projection(fn)        step 1: x, w_attn, b_attn -> q, k, v
    check_attention_scores(fn)      step 2: q, k -> q k^T / sqrt(D), causal mask
    check_attention_weights(fn)     step 3: scores -> softmax over the keys
    check_attention_output(fn)      step 4: weights, v -> weights @ v
    check_multi_head_attention(fn)  x, w_attn, b_attn, n_head -> steps 1-4 on each head
  backprop (02_backprop.ipynb)
    check_softmax_backward(fn)      dout, y -> dx
    check_layernorm_backward(fn)    dout, xhat, rstd, w -> dx, dw, db
    check_attention_backward(fn)    dout, q, k, v, weights -> dq, dk, dv
    check_cross_entropy_backward(fn)  logits, targets -> dlogits
  RLHF losses (03_rlhf_losses.ipynb)
    check_ranking_loss(fn)          scores (best first) -> loss, dscores
    check_kl_shaped_rewards(fn)     logp, ref_logp, scores, mask, beta -> rewards, kl
    check_gae(fn)                   rewards, values, mask, gamma, lam -> advantages, returns
    check_policy_loss(fn)           logp, old_logp, advantages, mask, clip -> loss, dlogp
"""
from minirlhf.exercises.attention import (
    check_attention_output, check_attention_scores, check_attention_weights, check_multi_head_attention,
    check_qkv_projection,
)
from minirlhf.exercises.backprop import (
    check_attention_backward, check_cross_entropy_backward, check_layernorm_backward, check_softmax_backward,
)
from minirlhf.exercises.checking import CheckResult, ExerciseError
from minirlhf.exercises.rlhf import check_gae, check_kl_shaped_rewards, check_policy_loss, check_ranking_loss

CHECKERS = (
    check_qkv_projection, check_attention_scores, check_attention_weights, check_attention_output,
    check_multi_head_attention,
    check_softmax_backward, check_layernorm_backward, check_attention_backward, check_cross_entropy_backward,
    check_ranking_loss, check_kl_shaped_rewards, check_gae, check_policy_loss,
)  # fmt: skip

__all__ = ["CheckResult", "ExerciseError", "CHECKERS"] + [c.__name__ for c in CHECKERS]
