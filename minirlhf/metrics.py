"""metrics.jsonl: one JSON object per logged step, the record every plot is drawn from.

Appending one line at a time (flushed) means a crash loses at most the current line,
and `tail -f metrics.jsonl` shows a run as it goes.
"""
import json
import math
from pathlib import Path


def _clean(value):
    """JSON has no NaN/inf; write them as null rather than produce invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Append-only metrics.jsonl writer."""

    def __init__(self, path, resume_after_step=None):
        """Open `path` for appending. With `resume_after_step`, first drop the lines
        logged after that step (a resumed run re-does them)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_after_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_after_step]
            self.path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        self._file = open(self.path, "a", encoding="utf-8")

    def log(self, **record):
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}, sort_keys=True) + "\n")
        self._file.flush()

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(path):
    """All records of a metrics.jsonl file, skipping a torn last line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def series(records, key):
    """(steps, values) for every record that has `key` with a value."""
    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None and "step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]
