"""Reading and writing the recipe's data files: JSONL records and a plain-text corpus.

Every stage reads its data through this module, whether the files come from the toy
world (`minirlhf data`) or from the user:

  corpus.txt         UTF-8 text for pretraining; documents separated by an empty line
  sft.jsonl          {"prompt": str, "response": str, ...}       SFT demonstrations
  comparisons.jsonl  {"prompt": str, "responses": [best, ..., worst], ...}
                     optional "finished": [bool, ...] (False: the response was cut off)
  *prompts*.jsonl    {"prompt": str, ...}                         RM / PPO / eval prompts

JSONL means one JSON object per line. Extra keys are allowed and kept. A malformed
line stops loading with an error naming the file and the line, e.g.
``data/sft.jsonl:17: expected a JSON object, got a list``; a missing or empty file is
an error too (a silent empty dataset would only fail later, somewhere confusing).

Files are written atomically (a temporary file in the same folder, then `os.replace`),
so a crash never leaves half a file, and deterministically (UTF-8, keys in a fixed
order, "\\n" line ends), so the same records give byte-identical files.
"""
import json
import os
import tempfile

from minirlhf.errors import MinirlhfError

# Keys written first, in this order; all other keys follow in sorted order.
LEADING_KEYS = ("prompt", "response", "responses")


def atomic_write_text(path, text):
    """Write `text` to `path` as UTF-8 via a temporary file and `os.replace`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; data files are for reading
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def to_json_line(record):
    """One record as one line of JSON, keys in the fixed order."""
    ordered = {k: record[k] for k in LEADING_KEYS if k in record}
    ordered.update((k, record[k]) for k in sorted(record) if k not in ordered)
    return json.dumps(ordered, ensure_ascii=False, allow_nan=False)


def write_jsonl(path, records):
    """Write `records` (dicts) to `path`, one JSON object per line, atomically."""
    atomic_write_text(path, "".join(to_json_line(record) + "\n" for record in records))


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise MinirlhfError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise MinirlhfError(f"{path}: is a folder, not a file") from None


def _read_text(path):
    path = os.fspath(path)
    data = _read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise MinirlhfError(
            f"{path}:{line}: not UTF-8 text (bad byte at offset {e.start})") from None


def read_json(path):
    """The JSON value in the file at `path` (a report, a run's settings); a missing file,
    one that is not UTF-8 or not JSON is a one-line error naming it."""
    path = os.fspath(path)
    try:
        return json.loads(_read_bytes(path).decode("utf-8"))
    except UnicodeDecodeError as e:
        raise MinirlhfError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None
    except (json.JSONDecodeError, RecursionError) as e:  # (json recurses into nested lists: "[[[[...")
        raise MinirlhfError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path):
    """All records of a JSONL file as a list of dicts. Blank lines are skipped."""
    return [record for _, record in _numbered_records(path)]


def _numbered_records(path):
    """[(line number, record)] of a JSONL file; errors name the file and line."""
    path = os.fspath(path)
    records = []
    # split on "\n" only: str.splitlines would also cut at U+2028, which JSON allows in strings
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise MinirlhfError(
                f"{path}:{number}: invalid JSON: {e.msg} (column {e.colno})") from None
        except RecursionError:  # json parses nested lists by recursion: "[[[[..." runs out of stack
            raise MinirlhfError(f"{path}:{number}: invalid JSON: nested too deeply") from None
        if not isinstance(record, dict):
            raise MinirlhfError(
                f"{path}:{number}: expected a JSON object, got {json_type(record)}")
        records.append((number, record))
    if not records:
        raise MinirlhfError(f"{path}: no records (the file is empty)")
    return records


def json_type(value):
    """How an error names the type of a parsed JSON value: "a list", "null", ..."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false",
             type(None): "null", int: "a number", float: "a number"}
    return names[type(value)]


def _load(path, check, line_numbers=False):
    """Read a JSONL file and run `check(record)` on each record; a check returns an
    error message (or None) and the error is reported with file and line.
    line_numbers=True returns [(line number, record)] instead of [record]."""
    records = []
    for number, record in _numbered_records(path):
        problem = check(record)
        if problem:
            raise MinirlhfError(f"{os.fspath(path)}:{number}: {problem}")
        records.append((number, record) if line_numbers else record)
    return records


def _string_problem(record, key):
    if key not in record:
        return f"missing key {key!r} (keys: {', '.join(sorted(record)) or 'none'})"
    if not isinstance(record[key], str):
        return f"{key!r} must be a string, got {json_type(record[key])}"
    return None


def _sft_problem(record):
    return _string_problem(record, "prompt") or _string_problem(record, "response")


def _comparison_problem(record):
    problem = _string_problem(record, "prompt")
    if problem:
        return problem
    responses = record.get("responses")
    if (not isinstance(responses, list) or len(responses) < 2
            or not all(isinstance(r, str) for r in responses)):
        return "'responses' must be a list of at least 2 strings, ordered best to worst"
    finished = record.get("finished", [True] * len(responses))
    if (not isinstance(finished, list) or len(finished) != len(responses)
            or not all(isinstance(f, bool) for f in finished)):
        return "'finished' must be a list of true/false, one per response"
    return None


def load_sft(path, line_numbers=False):
    """SFT demonstrations: records with a "prompt" and a "response" string.
    line_numbers=True gives [(line number, record)], so a later problem with a record
    (it does not fit the model's context, say) can name its line too."""
    return _load(path, _sft_problem, line_numbers)


def load_comparisons(path, line_numbers=False):
    """Rankings: records with a "prompt" and "responses" (>= 2 strings, best first),
    and optionally "finished" (one true/false per response). line_numbers: as load_sft."""
    return _load(path, _comparison_problem, line_numbers)


def load_prompts(path, line_numbers=False):
    """Prompts for the RM, PPO or evaluation: records with a "prompt" string.
    line_numbers: as load_sft."""
    return _load(path, lambda record: _string_problem(record, "prompt"), line_numbers)


def load_corpus(path):
    """A pretraining corpus: any UTF-8 text file that is not empty."""
    text = _read_text(path)
    if not text.strip():
        raise MinirlhfError(f"{os.fspath(path)}: the corpus is empty")
    return text
