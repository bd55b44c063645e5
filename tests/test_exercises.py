"""The exercise checkers: each passes the reference, fails the student stub with "not
implemented yet", and fails plausible wrong answers with a message that names the
mistake. Then the student-copy writer: markers replaced, valid notebooks, no solution
text left, the solutions folder never overwritten."""
import json
import math
import re

import nbformat
import numpy as np
import pytest

from minirlhf import layers, ppo, reward
from minirlhf.cli import main
from minirlhf.errors import MinirlhfError
from minirlhf.exercises import (
    CHECKERS, CheckResult, ExerciseError, check_attention_backward, check_attention_output, check_attention_scores,
    check_attention_weights, check_cross_entropy_backward, check_gae, check_kl_shaped_rewards,
    check_layernorm_backward, check_multi_head_attention, check_policy_loss, check_qkv_projection, check_ranking_loss,
    check_softmax_backward,
)
from minirlhf.exercises.student import SOLUTIONS, student_notebook, write_student_copies

T_AXIS = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731


def causal(scores):
    T = scores.shape[-1]
    return np.where(np.triu(np.ones((T, T), dtype=bool), k=1), -np.inf, scores)


def ce_reference(logits, targets):
    _, cache = layers.cross_entropy_forward(logits, targets, ops=layers)
    return layers.cross_entropy_backward(1.0, cache)


# The reference code of minirlhf, in the exercises' signatures.
REFERENCE = {
    check_qkv_projection: lambda x, w, b: tuple(np.split(x @ w + b, 3, axis=-1)),
    check_attention_scores: lambda q, k: causal(q @ T_AXIS(k) / math.sqrt(q.shape[-1])),
    check_attention_weights: lambda scores: layers.softmax_forward(scores)[0],
    check_attention_output: lambda weights, v: weights @ v,
    check_multi_head_attention: lambda x, w, b, n_head: layers.attention_forward(x @ w + b, n_head)[0],
    check_softmax_backward: layers.softmax_backward,
    check_layernorm_backward: lambda dout, xhat, rstd, w: layers.layernorm_backward(dout, (xhat, rstd, w)),
    check_attention_backward: lambda dout, q, k, v, w: layers.self_attention_backward(dout, (q, k, v, w, None)),
    check_cross_entropy_backward: ce_reference,
    check_ranking_loss: reward.ranking_loss,
    check_kl_shaped_rewards: ppo.kl_shaped_rewards,
    check_gae: ppo.gae,
    check_policy_loss: lambda *args: ppo.policy_loss(*args)[:2],
}


def test_every_checker_has_a_reference():
    assert set(REFERENCE) == set(CHECKERS)


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.__name__)
def test_checker_passes_the_reference(checker):
    result = checker(REFERENCE[checker])
    assert isinstance(result, CheckResult)
    assert repr(result).startswith(f"✓ {checker.__name__} passed.")
    assert "rel error" in repr(result)


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.__name__)
def test_checker_fails_the_stub(checker):
    def my_function(*args):
        raise NotImplementedError("fill in my_function")

    with pytest.raises(ExerciseError, match="not implemented yet: fill in the body of my_function"):
        checker(my_function)


# ----------------------------------------------------------------------------
# plausible wrong answers, each written the way a student might


def qkv_wrong_order(x, w, b):
    k, q, v = np.split(x @ w + b, 3, axis=-1)
    return q, k, v


def qkv_no_bias(x, w, b):
    return tuple(np.split(x @ w, 3, axis=-1))


def scores_unscaled(q, k):
    return causal(q @ T_AXIS(k))


def scores_unmasked(q, k):
    return q @ T_AXIS(k) / math.sqrt(q.shape[-1])


def scores_mask_the_past(q, k):
    T = q.shape[-2]
    s = q @ T_AXIS(k) / math.sqrt(q.shape[-1])
    return np.where(np.tril(np.ones((T, T), dtype=bool), k=-1), -np.inf, s)


def weights_wrong_axis(scores):
    e = np.exp(scores - scores.max(axis=-2, keepdims=True))
    return e / e.sum(axis=-2, keepdims=True)


def weights_overflow(scores):
    e = np.exp(scores)
    return e / e.sum(axis=-1, keepdims=True)


def output_transposed(weights, v):
    return T_AXIS(weights) @ v


def mha_reshape_split(x, w, b, n_head):
    B, T, C = x.shape
    q, k, v = (a.reshape(B, n_head, T, C // n_head) for a in np.split(x @ w + b, 3, axis=-1))
    out, _ = layers.self_attention_forward(q, k, v)
    return layers.merge_heads(out)


def mha_one_head(x, w, b, n_head):
    return layers.attention_forward(x @ w + b, 1)[0]


def softmax_backward_diagonal(dout, y):
    return y * dout


def softmax_backward_wrong_axis(dout, y):
    return y * (dout - (dout * y).sum(axis=0, keepdims=True))


def layernorm_backward_no_mean_path(dout, xhat, rstd, w):
    g = dout * w
    dx = rstd * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, (dout * xhat).sum(axis=(0, 1)), dout.sum(axis=(0, 1))


def layernorm_backward_swapped(dout, xhat, rstd, w):
    dx, dw, db = layers.layernorm_backward(dout, (xhat, rstd, w))
    return dx, db, dw


def attention_backward_dk_no_transpose(dout, q, k, v, weights):
    dv = T_AXIS(weights) @ dout
    dscores = layers.softmax_backward(dout @ T_AXIS(v), weights) / math.sqrt(q.shape[-1])
    return dscores @ k, dscores @ q, dv


def attention_backward_dv_no_transpose(dout, q, k, v, weights):
    dq, dk, _ = layers.self_attention_backward(dout, (q, k, v, weights, None))
    return dq, dk, weights @ dout


def attention_backward_unscaled(dout, q, k, v, weights):
    dv = T_AXIS(weights) @ dout
    dscores = layers.softmax_backward(dout @ T_AXIS(v), weights)
    return dscores @ k, T_AXIS(dscores) @ q, dv


def ce_sign_flipped(logits, targets):
    return -ce_reference(logits, targets)


def ce_ignores_nothing(logits, targets):
    p, _ = layers.softmax_forward(logits)
    valid = targets != -1
    p[np.arange(2)[:, None], np.arange(5), targets] -= 1.0  # target -1 hits the last class
    return p / valid.sum()


def ce_mean_over_all(logits, targets):
    return ce_reference(logits, targets) * (targets != -1).sum() / targets.size


def ranking_normalised_twice(scores):
    loss, dscores = reward.ranking_loss(scores)
    n_pairs = math.comb(len(scores), 2)
    return loss / n_pairs, dscores / n_pairs


def ranking_naive_log(scores):
    K = len(scores)
    loss, grad = 0.0, np.zeros(K)
    for i in range(K):
        for j in range(i + 1, K):
            s = 1.0 / (1.0 + np.exp(-(scores[i] - scores[j])))
            loss -= np.log(s)
            grad[i] -= 1 - s
            grad[j] += 1 - s
    return loss / math.comb(K, 2), grad / math.comb(K, 2)


def ranking_adjacent_pairs(scores):
    margins = scores[:-1] - scores[1:]
    return float(np.mean(np.logaddexp(0.0, -margins))), np.zeros_like(scores)


def kl_score_every_token(logp, ref_logp, scores, mask, beta):
    kl = np.where(mask, logp - ref_logp, 0.0)
    return -beta * kl + np.where(mask, scores[:, None], 0.0), kl


def kl_score_last_column(logp, ref_logp, scores, mask, beta):
    kl = np.where(mask, logp - ref_logp, 0.0)
    rewards = -beta * kl
    rewards[:, -1] += scores
    return rewards, kl


def gae_no_reset(rewards, values, mask, gamma, lam):
    B, T = rewards.shape
    adv, running = np.zeros((B, T)), np.zeros(B)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else 0.0
        running = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * running
        adv[:, t] = running
    return adv * mask, (adv + values) * mask


def gae_swapped(rewards, values, mask, gamma, lam):
    return ppo.gae(rewards, values, mask, lam, gamma)


def policy_min(logp, old_logp, advantages, mask, clip):
    ratio = np.exp(logp - old_logp)
    per_token = np.minimum(-advantages * ratio, -advantages * np.clip(ratio, 1 - clip, 1 + clip))
    return float((per_token * mask).sum() / mask.sum()), np.zeros_like(logp)


def policy_sign_flipped(logp, old_logp, advantages, mask, clip):
    return ppo.policy_loss(logp, old_logp, -advantages, mask, clip)[:2]


def policy_gradient_through_clip(logp, old_logp, advantages, mask, clip):
    loss, _, _ = ppo.policy_loss(logp, old_logp, advantages, mask, clip)
    return loss, -advantages * np.exp(logp - old_logp) * mask / mask.sum()


WRONG = [
    (check_qkv_projection, qkv_wrong_order, "your q is k: c_attn's output is q, k, v side by side, in that order"),
    (check_qkv_projection, qkv_no_bias, "the bias is missing"),
    (check_attention_scores, scores_unscaled, "the scores are not scaled: divide q k^T by sqrt(D)"),
    (check_attention_scores, scores_unmasked, "no score is masked: the causal mask is missing"),
    (check_attention_scores, scores_mask_the_past, "you masked the past (s < t) instead of the future"),
    (check_attention_weights, weights_wrong_axis, "the softmax is over the wrong axis"),
    (check_attention_weights, weights_overflow, "exp(1000) overflows"),
    (check_attention_output, output_transposed, "the weights are transposed"),
    (check_multi_head_attention, mha_reshape_split, "the heads are split with a reshape alone"),
    (check_multi_head_attention, mha_one_head, "single-head attention"),
    (check_softmax_backward, softmax_backward_diagonal, "the -y y^T part of the Jacobian"),
    (check_softmax_backward, softmax_backward_wrong_axis, ("dx is wrong", "the sum is over the wrong axis")),
    (check_layernorm_backward, layernorm_backward_no_mean_path, "the path through the mean is missing"),
    (check_layernorm_backward, layernorm_backward_swapped, "dw and db are swapped"),
    (check_attention_backward, attention_backward_dk_no_transpose, ("dk is wrong", "a transpose is missing")),
    (check_attention_backward, attention_backward_dv_no_transpose, ("dv is wrong", "dv = weights^T @ dout")),
    (check_attention_backward, attention_backward_unscaled, ("dq is wrong", "1/sqrt(D) of the forward is missing")),
    (check_cross_entropy_backward, ce_sign_flipped, "the sign is flipped"),
    (check_cross_entropy_backward, ce_ignores_nothing, "target is -1 must get zero gradient"),
    (check_cross_entropy_backward, ce_mean_over_all, "divided by every position"),
    (check_ranking_loss, ranking_normalised_twice, "normalised twice"),
    (check_ranking_loss, ranking_naive_log, "without overflow, as -np.logaddexp"),
    (check_ranking_loss, ranking_adjacent_pairs, "only neighbouring pairs"),
    (check_kl_shaped_rewards, kl_score_every_token, "the score is added on every response token"),
    (check_kl_shaped_rewards, kl_score_last_column, "the last column"),
    (check_gae, gae_no_reset, "not reset at the end of the response"),
    (check_gae, gae_swapped, "gamma and lambda are swapped"),
    (check_policy_loss, policy_min, "min instead of max"),
    (check_policy_loss, policy_sign_flipped, "the advantage's sign is flipped"),
    (check_policy_loss, policy_gradient_through_clip, ("dlogp is wrong", "the gradient is 0 at those tokens")),
]


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning",
                            "ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize("checker, wrong, messages", WRONG, ids=[w.__name__ for _, w, _ in WRONG])
def test_checker_names_the_mistake(checker, wrong, messages):
    with pytest.raises(ExerciseError) as info:
        checker(wrong)
    text = str(info.value)
    assert text.startswith(f"✗ {checker.__name__}: ")
    for message in [messages] if isinstance(messages, str) else messages:
        assert message in text
    assert "rel error" in text or "masked wrongly" in text or "should be finite" in text


def test_every_checker_is_tried_with_a_wrong_answer():
    assert {checker for checker, _, _ in WRONG} == set(CHECKERS)


def test_a_wrong_answer_shows_expected_and_got_and_the_error_size():
    with pytest.raises(ExerciseError) as info:
        check_softmax_backward(softmax_backward_wrong_axis)
    text = str(info.value)
    assert "correct answers get ~" in text and "allowed 1e-06" in text
    where = re.search(r"expected dx\[(.+)\] = \[", text).group(1)
    assert f"got      dx[{where}] = [" in text
    assert "entries differ" in text


def test_where_the_wrong_entries_are():
    def leaks_outside_the_mask(logp, ref_logp, scores, mask, beta):
        rewards, kl = ppo.kl_shaped_rewards(logp, ref_logp, scores, mask, beta)
        return rewards, kl + ~mask  # junk on prompt and padding positions

    with pytest.raises(ExerciseError, match="every wrong entry is outside the mask"):
        check_kl_shaped_rewards(leaks_outside_the_mask)


def test_student_exceptions_keep_their_traceback_with_a_note():
    def scores_with_dot_T(q, k):
        return q @ k.T  # .T reverses every axis of the (B, H, T, D) array

    with pytest.raises(ValueError) as info:
        check_attention_scores(scores_with_dot_T)
    assert any("check_attention_scores called with inputs: (2, 2, 5, 4)" in n for n in info.value.__notes__)


def test_missing_return_changed_input_and_wrong_arity_are_named():
    with pytest.raises(ExerciseError, match="None: did you forget a `return`"):
        check_attention_output(lambda weights, v: None)

    def in_place(scores):
        scores -= scores.max(axis=-1, keepdims=True)
        return layers.softmax_forward(scores)[0]

    with pytest.raises(ExerciseError, match="changed its input number 1 in place"):
        check_attention_weights(in_place)
    with pytest.raises(ExerciseError, match=r"should return a tuple \(advantages, returns\), got ndarray"):
        check_gae(lambda *args: ppo.gae(*args)[0])


def test_float32_answers_are_told_why_they_fail():
    with pytest.raises(ExerciseError, match="your answer is float32"):
        check_attention_output(lambda weights, v: weights.astype(np.float32) @ v.astype(np.float32))


def test_a_notebook_shows_the_verdict_without_a_traceback():
    with pytest.raises(ExerciseError) as info:
        check_gae(gae_swapped)
    assert info.value._render_traceback_() == [f"ExerciseError: {info.value}"]


def test_checkers_are_deterministic():
    def message(checker, wrong):
        with pytest.raises(ExerciseError) as info:
            checker(wrong)
        return str(info.value)

    assert message(check_policy_loss, policy_min) == message(check_policy_loss, policy_min)


# ----------------------------------------------------------------------------
# student copies


def solution_notebook():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("## Softmax\n`### BEGIN SOLUTION` in prose is left alone."),
        nbformat.v4.new_code_cell(
            "import numpy as np\n\n"
            "def softmax(x):\n"
            "    \"\"\"Rows sum to 1.\"\"\"\n"
            "    ### BEGIN SOLUTION\n"
            "    e = np.exp(x - x.max(axis=-1, keepdims=True))  # SECRET\n"
            "    return e / e.sum(axis=-1, keepdims=True)\n"
            "    ### END SOLUTION\n\n"
            "class Layer:\n"
            "    def forward(self, x):\n"
            "        ### BEGIN SOLUTION\n"
            "        return x * 2  # SECRET\n"
            "        ### END SOLUTION\n",
            execution_count=3, outputs=[nbformat.v4.new_output("stream", text="SECRET output\n")],
        ),
        nbformat.v4.new_code_cell("softmax(np.zeros(3))"),
    ]
    return nb


def test_student_copy_replaces_each_solution_with_a_stub():
    student = student_notebook(solution_notebook(), "demo.ipynb")
    nbformat.validate(student)
    source = student.cells[1].source
    assert "SECRET" not in json.dumps(student)
    assert "### BEGIN SOLUTION" not in source and "### END SOLUTION" not in source
    assert '    raise NotImplementedError("fill in softmax")\n' in source
    assert '        raise NotImplementedError("fill in forward")\n' in source
    assert student.cells[1].execution_count is None and student.cells[1].outputs == []
    assert student.cells[0].source == solution_notebook().cells[0].source
    namespace = {}
    exec(source, namespace)  # the stub is valid Python and raises what the checkers expect
    with pytest.raises(NotImplementedError):
        namespace["softmax"](np.zeros(3))


def test_unbalanced_markers_are_an_error_naming_the_cell():
    nb = solution_notebook()
    nb.cells[1].source = nb.cells[1].source.replace("    ### END SOLUTION\n\n", "", 1)
    with pytest.raises(MinirlhfError, match=r"demo.ipynb: cell 2: .*BEGIN SOLUTION"):
        student_notebook(nb, "demo.ipynb")


def test_write_student_copies_of_the_repository_exercises(tmp_path, capsys):
    assert main(["exercises", "--student", str(tmp_path / "mine")]) == 0
    written = sorted(p.name for p in (tmp_path / "mine").glob("*.ipynb"))
    assert written == sorted(p.name for p in SOLUTIONS.glob("*.ipynb")) and len(written) >= 3
    for path in (tmp_path / "mine").glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = "".join(cell.source for cell in nb.cells if cell.cell_type == "code")
        assert "SOLUTION" not in code and "NotImplementedError" in code
    assert "wrote" in capsys.readouterr().out


def test_student_copies_never_overwrite(tmp_path, capsys):
    with pytest.raises(MinirlhfError, match="solutions"):
        write_student_copies(SOLUTIONS)
    assert main(["exercises", "--student", str(SOLUTIONS)]) == 1
    assert "solutions" in capsys.readouterr().err
    write_student_copies(tmp_path / "out")
    work = tmp_path / "out" / "01_attention.ipynb"
    work.write_text(work.read_text().replace("fill in", "my work"))
    with pytest.raises(MinirlhfError, match="01_attention.ipynb already exists"):
        write_student_copies(tmp_path / "out")
    assert "my work" in work.read_text()
    write_student_copies(tmp_path / "out", overwrite=True)
    assert "my work" not in work.read_text()


def test_solutions_that_are_not_notebooks_or_an_out_path_that_is_a_file(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.ipynb").write_text("[]")
    assert main(["exercises", "--student", str(tmp_path / "mine"), "--solutions", str(tmp_path / "junk")]) == 1
    assert f"{tmp_path / 'junk' / 'a.ipynb'}: not a notebook" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")  # the OS refuses: the CLI says so in one line
    assert main(["exercises", "--student", str(tmp_path / "afile")]) == 1
    err = capsys.readouterr().err
    assert f"minirlhf exercises: error: File exists: {tmp_path / 'afile'}" in err and "Traceback" not in err, err
    assert main(["exercises", "--student", str(tmp_path / "afile" / "x")]) == 1
    assert f"error: Not a directory: {tmp_path / 'afile' / 'x'}" in capsys.readouterr().err
