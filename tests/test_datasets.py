"""Data files: round trips, atomic deterministic writes, and errors that name file and line."""
import json

import pytest

from minirlhf.datasets import (
    load_comparisons, load_corpus, load_prompts, load_sft, read_jsonl, write_jsonl,
)
from minirlhf.errors import MinirlhfError


def test_round_trip_keeps_extra_keys_unicode_and_key_order(tmp_path):
    path = tmp_path / "sft.jsonl"
    records = [
        {"user_id": "u1", "response": " ジェイコブは読書が好き。", "prompt": "q\nanswer:", "k": [1, 2]},
        {"prompt": "line\u2028separator", "response": " ok"},
    ]
    write_jsonl(path, records)
    assert load_sft(path) == records
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0].startswith('{"prompt": "q\\nanswer:", "response": " ジェイコブ')  # no \\u escapes
    assert list(json.loads(lines[0])) == ["prompt", "response", "k", "user_id"]
    assert lines[-1] == "" and len(lines) == 3


def test_writes_are_deterministic_and_atomic(tmp_path):
    path = tmp_path / "deep" / "prompts.jsonl"
    write_jsonl(path, [{"b": 1, "prompt": "x"}])
    first = path.read_bytes()
    write_jsonl(path, [{"prompt": "x", "b": 1}])
    assert path.read_bytes() == first
    with pytest.raises(ValueError):
        write_jsonl(path, [{"prompt": "x", "bad": float("nan")}])
    assert path.read_bytes() == first  # the old file survives a failed write
    assert [p.name for p in path.parent.iterdir()] == ["prompts.jsonl"]  # no temp files left


def write_lines(tmp_path, *lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("lines, loader, message", [
    (['{"prompt": "a", "response": "b"}', "", '{"prompt": "a", "response": '], load_sft,
     r"data.jsonl:3: invalid JSON"),
    (['{"prompt": "a", "response": "b"}', '["prompt", "response"]'], load_sft,
     r"data.jsonl:2: expected a JSON object, got a list"),
    (['{"prompt": "a"}'], load_sft, r"data.jsonl:1: missing key 'response'"),
    (['{"prompt": 3}'], load_prompts, r"data.jsonl:1: 'prompt' must be a string, got a number"),
    (['{"prompt": "a", "responses": ["only one"]}'], load_comparisons,
     r"data.jsonl:1: 'responses' must be a list of at least 2 strings"),
    (['{"prompt": "a", "responses": ["x", 2]}'], load_comparisons, r"data.jsonl:1: 'responses'"),
    (['{"prompt": "a", "responses": ["x", "y"], "finished": [true]}'], load_comparisons,
     r"data.jsonl:1: 'finished' must be a list"),
    ([], load_prompts, r"data.jsonl: no records"),
    (["", "   "], load_sft, r"data.jsonl: no records"),
    (['{"prompt": "a"}', "[" * 100_000], load_prompts, r"data.jsonl:2: invalid JSON: nested too deeply"),
])
def test_malformed_files_name_the_file_and_line(tmp_path, lines, loader, message):
    path = write_lines(tmp_path, *lines)
    with pytest.raises(MinirlhfError, match=message):
        loader(path)


def test_valid_files_load_with_their_optional_keys(tmp_path):
    path = write_lines(tmp_path, '{"prompt": "p", "responses": ["best", "worst"], "finished": [true, false]}',
                       '{"prompt": "q", "responses": ["a", "b", "c"], "labeler_id": 3}')
    records = load_comparisons(path)
    assert records[0]["finished"] == [True, False] and records[1]["labeler_id"] == 3
    assert read_jsonl(path) == records


def test_missing_and_undecodable_files(tmp_path):
    with pytest.raises(MinirlhfError, match=r"nope.jsonl: no such file"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(MinirlhfError, match="is a folder"):
        load_corpus(tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nalso fine\nbroken \xff here\n")
    with pytest.raises(MinirlhfError, match=r"bad.txt:3: not UTF-8"):
        load_corpus(bad)


def test_corpus_must_not_be_empty(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(" \n\n", encoding="utf-8")
    with pytest.raises(MinirlhfError, match="empty"):
        load_corpus(path)
    path.write_text("jacob loves reading.\n", encoding="utf-8")
    assert load_corpus(path) == "jacob loves reading.\n"
