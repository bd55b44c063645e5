"""argparse types that refuse a value out of range with a one-line error (exit 2), before
anything runs: a zero minibatch, a negative learning rate, a discount above 1, or a float
that is not a number at all (nan, inf: `--temperature nan` would sample garbage, and
`--min-seconds inf` would time forever)."""
import argparse
import math


def _checked(convert, ok, what):
    """An argparse type: convert the flag's text, and refuse a value outside its range
    with a one-line "must be ..." error (exit 2) before anything runs."""
    def parse(text):
        value = convert(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse


def finite_float(text):
    """float(text), refusing nan and +-inf: no flag of ours means anything at infinity, and
    NaN would poison every number it touches (or slip past a check written as `not v < 0`)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "0 or more")
positive_float = _checked(finite_float, lambda v: v > 0, "positive")
non_negative_float = _checked(finite_float, lambda v: v >= 0, "0 or more")
unit_float = _checked(finite_float, lambda v: 0 <= v <= 1, "between 0 and 1")
top_p_float = _checked(finite_float, lambda v: 0 < v <= 1, "above 0 and at most 1")
# --val-fraction: a held-out share; 0 leaves nothing to validate on, 1 nothing to train on.
share = _checked(finite_float, lambda v: 0 < v < 1, "strictly between 0 and 1")
adam_beta = _checked(finite_float, lambda v: 0 <= v < 1, "at least 0 and below 1")
# Float fields that must be positive or in an interval; every other float must be >= 0.
_FLOAT_TYPES = {"lr": positive_float, "value_lr": positive_float, "temperature": positive_float,
                "kl_target": positive_float, "gamma": unit_float, "lam": unit_float, "beta1": adam_beta,
                "beta2": adam_beta}


def flag_type(name, default):
    """The argparse type of the flag for a config field `name` whose default is `default`:
    counts are positive (steps and warmup may be 0: "as many as the epochs take", "none"),
    a seed is 0 or more, and floats as _FLOAT_TYPES says (>= 0 if it says nothing)."""
    if isinstance(default, int):
        return non_negative_int if name in ("seed", "steps", "warmup") else positive_int
    return _FLOAT_TYPES.get(name, non_negative_float)
