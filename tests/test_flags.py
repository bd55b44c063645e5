"""Numeric flags out of range stop the command at once, with argparse's one-line error
(exit 2), instead of a traceback later or a run that quietly does nonsense (a negative
learning rate trains away from the reward; --minibatch 0 divided by zero)."""
import pytest

from minirlhf.cli import main
from minirlhf.flags import flag_type, non_negative_int, positive_float, positive_int, unit_float

# The checks run while the arguments are parsed, so the paths need not exist.
PPO = ["ppo", "--policy", "p", "--reward", "r", "--out", "o"]
GRPO = ["grpo", "--policy", "p", "--reward", "r", "--out", "o"]
SFT = ["sft", "--init", "i", "--data", "d.jsonl", "--out", "o"]


@pytest.mark.parametrize("argv, flag, says", [
    (PPO + ["--minibatch", "0"], "--minibatch", "must be a positive integer, got 0"),
    (PPO + ["--rounds", "0"], "--rounds", "must be a positive integer, got 0"),
    (PPO + ["--lr", "-0.0001"], "--lr", "must be positive, got -0.0001"),
    (PPO + ["--gamma", "1.5"], "--gamma", "must be between 0 and 1, got 1.5"),
    (PPO + ["--gold-reward", "-5"], "--gold-reward", "must be 0 or more, got -5"),
    (PPO + ["--seed", "-3"], "--seed", "must be 0 or more, got -3"),
    (GRPO + ["--group-size", "0"], "--group-size", "must be a positive integer, got 0"),
    (SFT + ["--beta2", "1"], "--beta2", "must be at least 0 and below 1, got 1"),
    (SFT + ["--batch-size", "0"], "--batch-size", "must be a positive integer, got 0"),
    (["pipeline", "--seed", "-1"], "--seed", "must be 0 or more, got -1"),
    (["eval", "--models", "a=b", "--out", "o", "--batch-size", "0"], "--batch-size", "must be a positive integer"),
    (["sample", "--ckpt", "c", "--prompt", "hi", "--max-new-tokens", "-1"], "--max-new-tokens", "must be a positive"),
    (["dpo", "--policy", "p", "--out", "o", "--comparisons", "c", "--beta", "0"], "--beta", "must be positive, got 0"),
    # nan and inf are floats to Python but no value of any flag: nan passed `> 0` checks written
    # the other way round and sampled NUL bytes; inf passed `>= 0` and timed forever.
    (PPO + ["--lr", "inf"], "--lr", "must be a finite number, got inf"),
    (PPO + ["--gamma", "nan"], "--gamma", "must be a finite number, got nan"),
    (PPO + ["--gold-reward=-inf"], "--gold-reward", "must be a finite number, got -inf"),
    (["sample", "--ckpt", "c", "--temperature", "nan"], "--temperature", "must be a finite number, got nan"),
    (["sample", "--ckpt", "c", "--temperature", "inf"], "--temperature", "must be a finite number, got inf"),
    (["sample", "--ckpt", "c", "--top-p", "0"], "--top-p", "must be above 0 and at most 1, got 0"),
    (["sample", "--ckpt", "c", "--fill", "a ___ b", "--top-k", "0"], "--top-k", "must be a positive integer, got 0"),
    (["sample", "--ckpt", "c", "--fill", "a ___ b", "--prompt", "hi"], "--prompt", "not allowed with argument --fill"),
    (["eval", "--models", "a=b", "--out", "o", "--temperature", "nan"], "--temperature", "must be a finite number"),
    (["eval", "--models", "a=b", "--out", "o", "--temperature", "inf"], "--temperature", "must be a finite number"),
    (["longrange", "--out", "o", "--lstm-lr", "nan"], "--lstm-lr", "must be a finite number, got nan"),
    (["longrange", "--out", "o", "--prior", "1.5"], "--prior", "must be between 0 and 1, got 1.5"),
    (["notebooks", "--strip", "--timeout", "-1"], "--timeout", "must be 0 or more, got -1"),  # 0: no limit
])
def test_a_flag_out_of_range_is_refused_before_anything_runs(argv, flag, says, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {flag}: {says}" in err and "Traceback" not in err, err


def test_flag_types_of_config_fields():
    assert flag_type("iterations", 40) is positive_int
    assert flag_type("steps", 0) is non_negative_int  # 0: as many steps as the epochs take
    assert flag_type("seed", 0) is non_negative_int
    assert flag_type("lam", 0.95) is unit_float
    assert flag_type("temperature", 1.0) is positive_float
    assert flag_type("beta", 0.02)("0") == 0.0  # no KL penalty is allowed
    assert positive_int("3") == 3 and unit_float("1") == 1.0
    assert non_negative_int("0") == 0 and positive_float("1e-3") == 1e-3
