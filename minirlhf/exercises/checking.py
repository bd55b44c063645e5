"""The machinery every checker shares: call the student's function, compare each output
with the truth, and say precisely what is wrong.

A checker (see attention.py, backprop.py, rlhf.py) builds fixed-seed inputs, computes
the expected outputs with the reference code in minirlhf (or finite differences of it,
for a gradient), lists the answers that known mistakes would produce, then:

    report = Report("check_softmax_backward")
    got = call(report, fn, dout, y)                              # the student's answer
    report.compare("dx", got, expected, tol=GRAD_TOL, typical=...,
                   mistakes=[Mistake("the -y y^T part of the Jacobian is missing ...", y * dout)])
    return report.passed()

`compare` raises `ExerciseError` at the first output that is wrong, with the measured
error, expected vs got around the worst entry, where the wrong entries are, and the
hint of the first known mistake the answer matches.
"""
from dataclasses import dataclass, field

import numpy as np

from minirlhf.gradcheck import max_abs_diff, numerical_gradient, rel_error

# A float64 forward pass that follows the formula matches the reference to round-off
# (~1e-16); a wrong one is off by 1e-2 or more. 1e-8 sits far from both.
FORWARD_TOL = 1e-8
# A correct backward agrees with centred finite differences to ~1e-10 in float64
# (gradcheck.py explains why); 1e-6 is the project's threshold for every gradient.
GRAD_TOL = 1e-6
# An answer this close to what a known mistake produces *is* that mistake.
MISTAKE_TOL = 1e-6
SHOW = 6  # entries shown from the row around the worst difference


class ExerciseError(AssertionError):
    """The student's function gave a wrong answer; the message says which and why.

    In a notebook it is shown without a traceback (IPython's `_render_traceback_`):
    the failure is in the answer, not in the checker's code."""

    def _render_traceback_(self):
        return [f"ExerciseError: {self}"]


@dataclass
class Mistake:
    """A known wrong answer: the hint to give, and the output that mistake produces."""

    hint: str
    value: object


@dataclass
class CheckResult:
    """What a passed check measured. Its repr is the report, so a notebook cell ending in
    `check_x(fn)` shows it; in a script, print() it."""

    name: str
    lines: list = field(default_factory=list)

    def __repr__(self):
        return "\n".join([f"✓ {self.name} passed."] + [f"  {line}" for line in self.lines])

    __str__ = __repr__


class Report:
    """Collects the measurements of one check; `compare` raises at the first wrong output."""

    def __init__(self, name):
        self.name = name
        self.lines = []

    def fail(self, what, details=(), hint=None):
        lines = [f"✗ {self.name}: {what}"] + [f"  {d}" for d in details]
        if hint:
            lines.append(f"  hint: {hint}")
        raise ExerciseError("\n".join(lines))

    def compare(self, label, got, expected, *, tol=FORWARD_TOL, typical="~1e-16 (round-off)",
                mistakes=(), regions=None, hint=None, context=()):
        """Check one output (or gradient) against the expected array.

        label: its name in the messages ("dx", "advantages"); typical: the error a correct
        answer has here (said beside the measured one); mistakes: `Mistake`s tried in
        order when the answer is wrong; regions: {description: bool mask} used to say
        where the wrong entries are when they all lie in one; hint: said when no
        known mistake matches (or when the answer is not finite); context: lines about
        the inputs, said on failure.
        """
        expected = np.asarray(expected, dtype=np.float64)
        single = getattr(got, "dtype", None) == np.float32
        got = self.array(label, got, expected.shape, mistakes)
        if not np.all(np.isfinite(got)):
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(got))[0])
            where = f"{label}[{', '.join(map(str, bad))}]" if bad else label
            self.fail(f"{where} is {got[bad]}; every entry should be finite.",
                      hint=hint if hint else "look for exp() of a large number, a log of 0, or a division by 0.")
        err = rel_error(got, expected)
        if err <= tol:
            self.lines.append(f"{label}: rel error {err:.1e} (correct answers get {typical}; allowed {tol:.0e})")
            return
        details = list(context) + [f"rel error {err:.2e}, max abs diff {max_abs_diff(got, expected):.2e} "
                                   f"(correct answers get {typical}; allowed {tol:.0e})"]
        details += _show_worst(label, got, expected)
        details += _where_wrong(got, expected, regions)
        if single:
            details.append("your answer is float32: the inputs are float64, keep them so (float32 loses ~1e-7).")
        known = next((m.hint for m in mistakes if _matches(got, m.value)), None)
        self.fail(f"{label} is wrong.", details, known or hint)

    def passed(self):
        return CheckResult(self.name, self.lines)

    def array(self, label, got, shape, mistakes=()):
        """The student's output as a float64 array of the expected shape, or a verdict."""
        if got is None:
            self.fail(f"{label} is None: did you forget a `return`?")
        try:
            got = np.asarray(got, dtype=np.float64)
        except (TypeError, ValueError):
            self.fail(f"{label} should be an array of shape {shape}, got {type(got).__name__}: {got!r:.80}")
        if got.shape != tuple(shape):
            known = next((m.hint for m in mistakes if _matches(got, m.value)), None)
            self.fail(f"{label} has shape {got.shape}; it should be {tuple(shape)}.", hint=known)
        return got


def finite_differences(loss_fn, x, reference):
    """(numeric, typical): d loss_fn() / dx by centred differences (loss_fn reads x), and
    the error a correct backward has against them, measured on the reference's gradient."""
    numeric = numerical_gradient(loss_fn, x)
    return numeric, f"~{rel_error(reference, numeric):.0e} against these finite differences"


def call(report, fn, *args):
    """fn(*args) on copies of the inputs (so a function that changes its inputs cannot
    spoil the check), turning the stub's NotImplementedError into a clear verdict.
    Any other exception comes from the student's code and keeps its traceback, with a
    note of the input shapes it was called with."""
    copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    try:
        out = fn(*copies)
    except NotImplementedError:
        report.fail(f"not implemented yet: fill in the body of {getattr(fn, '__name__', 'your function')} "
                    "(it still raises NotImplementedError).")
    except Exception as e:
        if hasattr(e, "add_note"):  # Python >= 3.11
            shapes = ", ".join(str(np.shape(a)) if isinstance(a, np.ndarray) else repr(a) for a in args)
            e.add_note(f"(raised inside your function, which {report.name} called with inputs: {shapes})")
        raise
    for i, (a, c) in enumerate(zip(args, copies)):
        if isinstance(a, np.ndarray) and not np.array_equal(a, c, equal_nan=True):
            report.fail(f"your function changed its input number {i + 1} in place.",
                        hint="work on a copy (x = x.copy()) or build new arrays: the caller still needs its inputs.")
    return out


def unpack(report, out, names):
    """Split a function's tuple output into its named parts, or say what came back."""
    if not isinstance(out, (tuple, list)) or len(out) != len(names):
        kind = f"{len(out)} values" if isinstance(out, (tuple, list)) else type(out).__name__
        report.fail(f"should return a tuple ({', '.join(names)}), got {kind}.")
    return out


def _matches(got, candidate):
    candidate = np.asarray(candidate, dtype=np.float64)
    if candidate.shape != got.shape or not np.all(np.isfinite(got)):
        return False
    return rel_error(got, candidate) < MISTAKE_TOL


def _show_worst(label, got, expected):
    """Expected vs got along the last axis, around the entry that differs most."""
    if expected.ndim == 0:
        return [f"expected {label} = {float(expected):.6g}", f"got      {label} = {float(got):.6g}"]
    worst = np.unravel_index(np.argmax(np.abs(got - expected)), expected.shape)
    n = expected.shape[-1]
    start = min(max(worst[-1] - SHOW // 2, 0), max(n - SHOW, 0))
    cols = slice(start, start + SHOW)
    where = ", ".join([str(i) for i in worst[:-1]] + [f"{start}:{min(start + SHOW, n)}"])
    fmt = {"float_kind": lambda v: f"{v: .4g}"}
    row = worst[:-1]
    expected, got = expected + 0.0, got + 0.0  # -0.0 + 0.0 is 0.0: no "-0" in the printout
    return [
        f"expected {label}[{where}] = {np.array2string(expected[row][cols], formatter=fmt)}",
        f"got      {label}[{where}] = {np.array2string(got[row][cols], formatter=fmt)}",
    ]


def _where_wrong(got, expected, regions):
    """How many entries are wrong, and the one region (if any) that holds all of them."""
    scale = max(float(np.abs(expected).max()), 1e-12)
    wrong = np.abs(got - expected) > 1e-6 * scale
    lines = [f"{int(wrong.sum())} of {wrong.size} entries differ."] if expected.ndim else []
    for description, region in (regions or {}).items():
        region = np.broadcast_to(region, wrong.shape)
        if wrong.any() and not wrong[~region].any():
            lines.append(f"every wrong entry is {description}.")
            break
    return lines
