"""Tests for minirlhf.tokenizer: round trips, BPE training, saving and loading, errors."""
import json
import os
import re

import numpy as np
import pytest

from minirlhf.errors import MinirlhfError
from minirlhf.tokenizer import (
    MAX_CHUNK_CHARS,
    SPECIAL_TOKENS,
    TOKENIZER_KINDS,
    BPETokenizer,
    CharTokenizer,
    load_tokenizer,
    tokenizer_from_dict,
    train_tokenizer,
)

ENGLISH = (
    "Jacob loves reading. Jacob reads a book every evening, and the book is about the sea.\n"
    "Mary loves the sea too; she sails on the sea every summer.\n"
    "Is the sea blue? The sea is blue, and the sky is blue as well.\n"
) * 30

ROUND_TRIP_TEXTS = {
    "ascii": "Hello, world! It's 2022.\n\tTabs\tand  double  spaces   and a trailing space ",
    "japanese": "ジェイコブは読書が大好きです。\nＣｈａｔＧＰＴ を支える機械学習モデル、々。",
    "emoji": "family 👩‍👩‍👧, thumbs 👍🏽, flag 🇯🇵, keycap 1️⃣",
    "specials": "one<|endoftext|>two<|pad|><|pad|><|endoftext|>",
    "odd": "e\u0301 \u00a0nbsp\r\nwindows\x00nul incomprehensibilities 12345678901234567890 a_b",
    "empty": "",
}


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(ENGLISH, vocab_size=320)


def make_tokenizer(kind, text):
    """A tokenizer of `kind` able to encode `text` (the char one must have seen its characters)."""
    if kind == "char":
        return CharTokenizer.train(ENGLISH + text)
    return BPETokenizer.train(ENGLISH, vocab_size=300)


# ------------------------------------------------------------------ special tokens


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_special_tokens_are_distinct_and_last(kind):
    tok = make_tokenizer(kind, "")
    assert tok.eot_id != tok.pad_id
    assert tok.special_ids == (tok.eot_id, tok.pad_id)
    assert sorted(tok.special_ids) == [tok.vocab_size - 2, tok.vocab_size - 1]
    assert tok.decode([tok.eot_id, tok.pad_id]) == "".join(SPECIAL_TOKENS)


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_special_strings_in_text_become_special_ids(kind):
    tok = make_tokenizer(kind, "")
    ids = tok.encode("a<|endoftext|>b<|pad|>")
    assert ids == tok.encode("a") + [tok.eot_id] + tok.encode("b") + [tok.pad_id]


def test_special_strings_are_not_part_of_the_learned_vocabulary():
    assert CharTokenizer.train("ab<|endoftext|>ba").chars == ("a", "b")
    tok = BPETokenizer.train("hello<|endoftext|>" * 20, vocab_size=262)
    learned = [tok.decode([i]) for i in range(256, 260)]
    assert all(set(token) <= set("helo") for token in learned), learned


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
@pytest.mark.parametrize("name", ROUND_TRIP_TEXTS)
def test_encode_decode_round_trip(kind, name):
    text = ROUND_TRIP_TEXTS[name]
    tok = make_tokenizer(kind, text)
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_decode_accepts_numpy_ids(bpe):
    ids = bpe.encode("the sea is blue")
    assert bpe.decode(np.array(ids, dtype=np.int64)) == "the sea is blue"


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_decode_rejects_ids_outside_the_vocabulary(kind):
    tok = make_tokenizer(kind, "")
    for bad in (tok.vocab_size, -1):
        with pytest.raises(MinirlhfError, match=f"token id {bad} is out of range"):
            tok.decode([0, bad])


def test_bpe_token_bytes(bpe):
    assert bpe.token_bytes(0xE3) == b"\xe3"  # the first of the three bytes of "ジ"
    assert bpe.token_bytes(bpe.eot_id) == b"<|endoftext|>"
    ids = bpe.encode(" the sea")
    assert b"".join(bpe.token_bytes(i) for i in ids) == b" the sea"
    with pytest.raises(MinirlhfError, match="out of range"):
        bpe.token_bytes(bpe.vocab_size)


def test_bpe_decode_of_invalid_utf8_does_not_raise(bpe):
    # A lone continuation byte, then the first two of the three bytes of "ジ".
    text = bpe.decode([0x80, 0xE3, 0x82, bpe.eot_id])
    assert text.endswith("<|endoftext|>")
    assert "\ufffd" in text


def test_bpe_encode_of_a_lone_surrogate_is_an_error_naming_it(bpe):
    # json.loads('"\\ud800"') and a non-UTF-8 byte in argv (decoded with surrogateescape)
    # both give Python strings that UTF-8 cannot encode.
    text = json.loads('"ab<|endoftext|>c \\ud800"')
    with pytest.raises(MinirlhfError, match=r"not valid Unicode: '\\ud800' \(U\+D800\) at position 17"):
        bpe.encode(text)
    with pytest.raises(MinirlhfError, match=r"'\\udcff' \(U\+DCFF\) at position 6"):
        bpe.encode(os.fsdecode(b"jacob \xff loves"))


# ------------------------------------------------------------------ char tokenizer


def test_char_vocabulary_is_sorted_characters_of_the_text():
    tok = CharTokenizer.train("banana!")
    assert tok.chars == ("!", "a", "b", "n")
    assert tok.encode("nab") == [3, 1, 2]
    assert tok.vocab_size == 6


def test_char_unknown_character_error_names_character_position_and_bpe():
    tok = CharTokenizer.train("abc")
    with pytest.raises(MinirlhfError) as info:
        tok.encode("ab<|endoftext|>cジ")
    message = str(info.value)
    assert "'ジ'" in message
    assert "U+30B8" in message
    assert "position 16" in message  # counted in the whole text, special string included
    assert "BPE" in message


@pytest.mark.parametrize("text", ["", "<|endoftext|>"])
def test_char_training_on_empty_text_is_an_error(text):
    with pytest.raises(MinirlhfError, match="empty"):
        CharTokenizer.train(text)


# ------------------------------------------------------------------ BPE training


def test_bpe_first_merge_is_the_most_frequent_pair():
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=259)
    assert tok.merges == ((ord("a"), ord("a")),)
    assert tok.decode([256]) == "aa"
    assert tok.token_bytes(256) == b"aa"
    assert tok.encode("aaabdaaabac") == [256, 97, 98, 100, 256, 97, 98, 97, 99]


def test_bpe_ties_break_towards_the_smallest_pair():
    # Chunks "ba" and " ab": the pairs (b,a), (space,a) and (a,b) each occur once.
    tok = BPETokenizer.train("ba ab", vocab_size=259)
    assert tok.merges == ((ord(" "), ord("a")),)


def test_bpe_reaches_the_requested_vocab_size_exactly():
    tok = BPETokenizer.train(ENGLISH, vocab_size=300)
    assert tok.vocab_size == 300
    assert len(tok.merges) == 300 - 256 - len(SPECIAL_TOKENS)
    assert tok.special_ids == (298, 299)
    assert max(max(tok.encode(ENGLISH)), *tok.special_ids) == 299


def test_bpe_training_is_deterministic():
    first = BPETokenizer.train(ENGLISH, vocab_size=300)
    second = BPETokenizer.train(ENGLISH, vocab_size=300)
    assert first.merges == second.merges
    assert first == second


def test_bpe_compresses_repetitive_english(bpe):
    ids = bpe.encode(ENGLISH)
    assert len(ids) < 0.5 * len(ENGLISH.encode("utf-8"))


def _token_boundaries(tok, ids):
    """Byte offsets at which the tokens `ids` end."""
    return set(np.cumsum([len(tok.token_bytes(i)) for i in ids]).tolist())


@pytest.mark.parametrize(
    "chunks",
    [
        ["Jacob", " loves", " reading", ".", "\n"],
        ["Jacob", " ", " reads", "   ", " books", "\n\n"],  # the last space goes with the word
        ["ジェイコブ", "は", "読書", "が", "大好", "きです", "。"],  # a chunk per script run
    ],
)
def test_bpe_tokens_never_cross_a_chunk_boundary(chunks):
    text = "".join(chunks)
    tok = BPETokenizer.train(text * 20, vocab_size=270)
    chunk_ends = np.cumsum([len(c.encode("utf-8")) for c in chunks])
    assert set(chunk_ends.tolist()) <= _token_boundaries(tok, tok.encode(text))
    assert len(tok.encode(text)) < len(text.encode("utf-8"))


def test_bpe_tokens_never_hold_more_than_max_chunk_chars_letters():
    word = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN"  # 40 different letters
    # Cut into chunks of 16 + 16 + 8 letters, which take 15 + 15 + 7 merges to learn.
    tok = BPETokenizer.train((word + "\n") * 20, vocab_size=258 + 37)
    assert max(len(tok.token_bytes(i)) for i in range(256, 256 + 37)) == MAX_CHUNK_CHARS
    assert len(tok.encode(word)) == 3


def test_bpe_vocab_size_below_bytes_plus_specials_is_an_error():
    with pytest.raises(MinirlhfError, match="at least 258"):
        BPETokenizer.train(ENGLISH, vocab_size=257)
    with pytest.raises(MinirlhfError, match="integer"):
        BPETokenizer.train(ENGLISH, vocab_size=300.0)


def test_bpe_text_too_small_for_vocab_size_is_an_error():
    # "abab" has 3 merges to learn at most: (a,b), then (ab,ab).
    with pytest.raises(MinirlhfError, match="at most 260"):
        BPETokenizer.train("abab", vocab_size=300)
    with pytest.raises(MinirlhfError, match="empty"):
        BPETokenizer.train("", vocab_size=300)


# ------------------------------------------------------------------ train_tokenizer


def test_train_tokenizer_dispatches_on_kind():
    assert train_tokenizer("char", "abc") == CharTokenizer.train("abc")
    assert train_tokenizer("bpe", ENGLISH, vocab_size=300) == BPETokenizer.train(ENGLISH, 300)
    with pytest.raises(MinirlhfError, match="cannot be chosen"):
        train_tokenizer("char", "abc", vocab_size=10)
    with pytest.raises(MinirlhfError, match="needs a vocab_size"):
        train_tokenizer("bpe", ENGLISH)
    with pytest.raises(MinirlhfError, match="unknown tokenizer kind 'word'"):
        train_tokenizer("word", ENGLISH)


# ------------------------------------------------------------------ saving and loading


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_save_then_load_gives_an_equal_tokenizer(kind, tmp_path):
    tok = make_tokenizer(kind, ROUND_TRIP_TEXTS["japanese"])
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok)
    assert loaded == tok
    text = ROUND_TRIP_TEXTS["japanese"] + "<|endoftext|>"
    assert loaded.encode(text) == tok.encode(text)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["type"] == kind
    assert os.listdir(tmp_path) == ["tokenizer.json"]  # no temporary file left behind


def test_save_overwrites_an_existing_file(tmp_path, bpe):
    path = tmp_path / "tokenizer.json"
    CharTokenizer.train("abc").save(path)
    bpe.save(str(path))
    assert load_tokenizer(str(path)) == bpe


def test_save_failure_names_the_file(tmp_path, bpe):
    path = tmp_path / "tokenizer.json"
    path.mkdir()  # a folder where the file should go
    with pytest.raises(MinirlhfError, match=re.escape(f"cannot write tokenizer file {path}")):
        bpe.save(path)
    assert os.listdir(tmp_path) == ["tokenizer.json"]  # no temporary file left behind


def test_tokenizers_differ_when_their_vocabularies_differ(bpe):
    assert bpe != BPETokenizer.train(ENGLISH, vocab_size=300)
    assert CharTokenizer.train("abc") != CharTokenizer.train("abd")
    assert tokenizer_from_dict(bpe.to_dict()) == bpe
    assert bpe != "not a tokenizer"


def _write(tmp_path, content):
    path = tmp_path / "broken.json"
    path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"type": "word", "special_tokens": []}', "must be one of 'char', 'bpe'"),
        ('{"special_tokens": SPECIALS, "merges": []}', 'no "type" field'),
        ('{"type": "bpe", "special_tokens": SPECIALS}', 'no "merges" field'),
        ('{"type": "char", "special_tokens": SPECIALS}', 'no "chars" field'),
        ('{"type": "bpe", "merges": []}', 'no "special_tokens" field'),
        ('{"type": "bpe", "special_tokens": ["<|eos|>"], "merges": []}', "special_tokens"),
        ('{"type": "bpe", "special_tokens": SPECIALS, "merges": [[97, 256]]}', "merge number 0"),
        ('{"type": "char", "special_tokens": SPECIALS, "chars": ["a", "a"]}', "twice"),
    ],
)
def test_load_of_a_broken_file_names_the_file(tmp_path, content, expected):
    path = _write(tmp_path, content.replace("SPECIALS", json.dumps(SPECIAL_TOKENS)))
    with pytest.raises(MinirlhfError) as info:
        load_tokenizer(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_load_of_a_missing_file_names_the_file(tmp_path):
    path = tmp_path / "missing.json"
    with pytest.raises(MinirlhfError, match=re.escape(f"{path} does not exist")):
        load_tokenizer(path)


def test_load_of_a_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"type": "char", "chars": ["é"]}'.encode("latin-1"))
    with pytest.raises(MinirlhfError, match=re.escape(f"cannot read tokenizer file {path}")):
        load_tokenizer(path)
