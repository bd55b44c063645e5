"""Tokenizers: turn text into a list of integer ids and back.

A language model never sees text, only integers ("token ids"), one per position. A
tokenizer decides what one token stands for. This module has two:

* `CharTokenizer` -- one token per character of a training text. Easiest to read, but
  it can only encode the characters it saw during training.

* `BPETokenizer` -- byte-level Byte Pair Encoding, the idea behind GPT-2's tokenizer.

  *Why bytes?* UTF-8 writes every piece of text -- English, Japanese, emoji -- as a
  sequence of bytes, and there are only 256 different bytes. If the 256 bytes are the
  first 256 tokens, any text can be encoded: there is no "unknown character".

  *What is a merge?* Text as raw bytes makes long sequences ("ジ" alone is 3 bytes),
  and the model wastes its context on them. Training therefore counts which two
  neighbouring tokens occur together most often in the training text, say "t" and
  "h", and adds a new token meaning "th": that is a *merge*. Every occurrence of the
  pair becomes the new token, and counting starts again, so later merges can build on
  earlier ones ("th" + "e" -> "the"). Training stops when the vocabulary has the
  requested size. Encoding new text replays the learned merges in the order they were
  learned; decoding just concatenates the bytes of each token.

  Before counting, the text is cut into chunks -- a word with its leading space, a run
  of digits, a run of punctuation, a run of whitespace -- and merges never cross a
  chunk boundary. So " the" can become one token, but "the." never does. (Japanese puts
  no spaces between words; there a run of kanji, of hiragana or of katakana is a
  chunk.) Chunking also makes
  training fast: a text of a million words has only a few tens of thousands of
  *different* chunks, and the pairs are counted once per different chunk, weighted by
  how often that chunk occurs.

Both tokenizers end their vocabulary with the `SPECIAL_TOKENS`: `<|endoftext|>`, which
separates documents and tells the model where an answer stops, and `<|pad|>`, which
fills batches of unequal lengths. They are distinct tokens so that padding can be
masked out of a loss while end-of-text stays in it. A tokenizer for a masked-language
model (`mask_token=True`, see mlm.py) adds a third, `<|mask|>`: the blank the model
learns to fill ("Jacob <|mask|> reading"). It is optional so that every tokenizer
saved before it existed loads unchanged, with the same ids.

Typical use::

    tok = BPETokenizer.train(text, vocab_size=1024)
    ids = tok.encode("Hello world<|endoftext|>")
    assert tok.decode(ids) == "Hello world<|endoftext|>"
    tok.save("run/tokenizer.json")
    assert load_tokenizer("run/tokenizer.json") == tok
"""
import heapq
import json
import operator
import os
import re
from collections import Counter, defaultdict

from minirlhf.datasets import atomic_write_text
from minirlhf.errors import MinirlhfError

SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")
MASK_TOKEN = "<|mask|>"  # only in a masked-language model's tokenizer, after the others
MLM_SPECIAL_TOKENS = SPECIAL_TOKENS + (MASK_TOKEN,)

# Split text around the literal special-token strings of a tokenizer; the capturing
# group keeps the specials themselves in the result of `re.split`. (Without a mask
# token, "<|mask|>" in a text is ordinary text, as it was before the mask existed.)
_SPECIAL_SPLIT = {
    specials: re.compile("(" + "|".join(re.escape(s) for s in specials) + ")")
    for specials in (SPECIAL_TOKENS, MLM_SPECIAL_TOKENS)
}


def _specials(mask_token):
    return MLM_SPECIAL_TOKENS if mask_token else SPECIAL_TOKENS

# How BPE cuts text into chunks before merging. GPT-2's idea, written for the standard
# `re` module: a word with its leading space, a number, a run of punctuation or
# symbols, or whitespace. Every character matches one of the alternatives, so the
# chunks always add up to the whole text.
#
# Japanese (and Chinese) put no spaces between words, so a whole sentence would be one
# "word". Two rules keep chunks short, which keeps training and encoding fast:
# a run of kanji, of hiragana or of katakana is a chunk of its own (roughly a word,
# or a grammatical ending: "ジェイコブ" "は" "読書" "が" "大好" "きです"), and no run is
# longer than MAX_CHUNK_CHARS characters (a longer one is cut into several chunks).
MAX_CHUNK_CHARS = 16
_KANJI = "\u3005\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # 々 and CJK ideographs
_HIRAGANA = "\u3041-\u309f"
_KATAKANA = "\u30a0-\u30ff\uff66-\uff9f"  # with ー and half-width katakana
_CJK = _KANJI + _HIRAGANA + _KATAKANA
_RUN = f"{{1,{MAX_CHUNK_CHARS}}}"
_CHUNK = re.compile(
    rf" ?[{_KANJI}]{_RUN}"
    rf"| ?[{_HIRAGANA}]{_RUN}"
    rf"| ?[{_KATAKANA}]{_RUN}"
    rf"| ?(?:(?![{_CJK}])[^\W\d_]){_RUN}"  # other letters: " hello", " Größe"
    rf"| ?\d{_RUN}"  # a number: " 2022"
    rf"| ?(?:[^\s\w]|_){_RUN}"  # punctuation or symbols: ".", " (", "👩‍👩‍👧"
    r"|\s+(?!\S)"  # whitespace, leaving the last space to the word after it
    r"|\s+"  # whitespace at the very end of the text
)

_N_BYTES = 256


class Tokenizer:
    """What both tokenizers share: special tokens, encode/decode, save, equality.

    A subclass numbers its own ("regular") tokens 0 .. n_regular-1; the special
    tokens get the next ids, in the order of `SPECIAL_TOKENS` (then `MASK_TOKEN` if
    `mask_token`). It provides `kind` (the "type" in its JSON),
    `_encode_ordinary(text, position)` and `_decode_ordinary(ids)` for text without
    special tokens, and `_vocab_dict()`.
    """

    def __init__(self, n_regular, mask_token=False):
        self._specials = _specials(mask_token)
        self._special_to_id = {s: n_regular + i for i, s in enumerate(self._specials)}
        self._id_to_special = {i: s for s, i in self._special_to_id.items()}
        self.n_regular = n_regular
        self._vocab_size = n_regular + len(self._specials)

    @property
    def vocab_size(self):
        """Number of distinct token ids: regular tokens plus special tokens."""
        return self._vocab_size

    @property
    def eot_id(self):
        """Id of `<|endoftext|>`: separates documents, ends an answer."""
        return self._special_to_id["<|endoftext|>"]

    @property
    def pad_id(self):
        """Id of `<|pad|>`: fills unused positions of a batch; never equals `eot_id`."""
        return self._special_to_id["<|pad|>"]

    @property
    def mask_id(self):
        """Id of `<|mask|>`, the blank of a masked-language model (mlm.py)."""
        if MASK_TOKEN not in self._special_to_id:
            raise MinirlhfError(
                f"this tokenizer has no {MASK_TOKEN} token; masked-language modelling needs one "
                "(train it with mask_token=True, as `pretrain --objective mlm` does)"
            )
        return self._special_to_id[MASK_TOKEN]

    @property
    def special_ids(self):
        """Ids of the special tokens, in the order of `SPECIAL_TOKENS` (then the mask)."""
        return tuple(self._special_to_id[s] for s in self._specials)

    def encode(self, text):
        """Turn `text` into a list of token ids.

        The literal strings of the special tokens are recognised anywhere in the
        text: "a<|endoftext|>b" encodes to the ids of "a", then `eot_id`, then the
        ids of "b". That is how a corpus file separates its documents. Everything
        else is encoded as ordinary text.
        """
        ids = []
        position = 0  # of the current piece in `text`, for error messages
        for piece in _SPECIAL_SPLIT[self._specials].split(text):
            if piece in self._special_to_id:
                ids.append(self._special_to_id[piece])
            elif piece:
                ids.extend(self._encode_ordinary(piece, position))
            position += len(piece)
        return ids

    def decode(self, ids):
        """Turn token ids back into text; special ids give back their strings.

        Never fails on valid ids: BPE ids whose bytes are not valid UTF-8 (a sampled
        sequence can stop in the middle of a character) decode to "\ufffd".
        """
        ids = self._checked_ids(ids)
        text = []
        ordinary = []  # a run of regular ids, decoded together (see BPETokenizer)
        for i in ids:
            if i in self._id_to_special:
                text.append(self._decode_ordinary(ordinary))
                text.append(self._id_to_special[i])
                ordinary = []
            else:
                ordinary.append(i)
        text.append(self._decode_ordinary(ordinary))
        return "".join(text)

    def _checked_ids(self, ids):
        # An id from another vocabulary (e.g. a mismatched checkpoint) must not
        # silently decode to a wrong token, or a negative one wrap around the list.
        checked = []
        for i in ids:
            i = operator.index(i)  # an int or a NumPy integer, never a float
            if not 0 <= i < self.vocab_size:
                raise MinirlhfError(
                    f"token id {i} is out of range for this tokenizer "
                    f"(vocab_size {self.vocab_size}, ids 0..{self.vocab_size - 1}); "
                    "were these ids made with a different tokenizer?"
                )
            checked.append(i)
        return checked

    def to_dict(self):
        """Everything needed to rebuild this tokenizer, as JSON-compatible data."""
        return {"type": self.kind, **self._vocab_dict(), "special_tokens": list(self._specials)}

    def save(self, path):
        """Write the tokenizer as UTF-8 JSON, atomically (a crash never leaves half a file)."""
        try:
            atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False) + "\n")
        except OSError as e:
            raise MinirlhfError(f"cannot write tokenizer file {os.fspath(path)}: {e}") from None

    def __eq__(self, other):
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class CharTokenizer(Tokenizer):
    """One token per character seen in the training text, then the special tokens."""

    kind = "char"

    def __init__(self, chars, mask_token=False):
        """`chars`: the characters of the vocabulary, in id order (no duplicates)."""
        self._chars = tuple(chars)
        self._char_to_id = {c: i for i, c in enumerate(self._chars)}
        super().__init__(len(self._chars), mask_token)

    @classmethod
    def train(cls, text, mask_token=False):
        """Vocabulary = the sorted set of characters of `text` (special-token strings excluded)."""
        specials = _specials(mask_token)
        ordinary = "".join(p for p in _SPECIAL_SPLIT[specials].split(text) if p not in specials)
        if not ordinary:
            raise MinirlhfError("cannot train a character tokenizer on empty text")
        return cls(sorted(set(ordinary)), mask_token)

    @property
    def chars(self):
        """The vocabulary's characters, in id order."""
        return self._chars

    def _encode_ordinary(self, text, position):
        try:
            return [self._char_to_id[c] for c in text]
        except KeyError:
            offset = next(k for k, c in enumerate(text) if c not in self._char_to_id)
            raise MinirlhfError(_unknown_char_message(text[offset], position + offset)) from None

    def _decode_ordinary(self, ids):
        return "".join(self._chars[i] for i in ids)

    def _vocab_dict(self):
        return {"chars": list(self._chars)}


def _unknown_char_message(char, position):
    return (
        f"character {char!r} (U+{ord(char):04X}) at position {position} is not in the "
        "character tokenizer's vocabulary (it never occurred in the training text); "
        "retrain on a text that contains it, or use the BPE tokenizer, which covers "
        "any UTF-8 text"
    )


def _lone_surrogate_message(char, position):
    return (
        f"the text is not valid Unicode: {char!r} (U+{ord(char):04X}) at position {position} is half of a "
        "UTF-16 surrogate pair, alone (a JSON \\ud800-style escape, or a byte that is not UTF-8 in a "
        "command-line argument), and has no UTF-8 bytes to encode"
    )


class BPETokenizer(Tokenizer):
    """Byte-level BPE: ids 0-255 are the bytes, then one id per learned merge, then specials."""

    kind = "bpe"

    def __init__(self, merges, mask_token=False):
        """`merges`: the learned pairs of token ids, in the order they were learned.

        Merge number k joins the pair `merges[k]` into the new token id 256 + k.
        """
        self._merges = tuple((int(a), int(b)) for a, b in merges)
        # pair -> new id; since ids grow with learning order, a smaller new id also
        # means "learned earlier", which is the order encoding must apply merges in.
        self._merge_ids = {pair: _N_BYTES + k for k, pair in enumerate(self._merges)}
        self._token_bytes = [bytes([b]) for b in range(_N_BYTES)]
        for a, b in self._merges:
            self._token_bytes.append(self._token_bytes[a] + self._token_bytes[b])
        self._chunk_cache = {}  # chunk -> its ids; natural text repeats its words a lot
        super().__init__(_N_BYTES + len(self._merges), mask_token)
        self._token_bytes += [s.encode("utf-8") for s in self._specials]

    @classmethod
    def train(cls, text, vocab_size, mask_token=False):
        """Learn merges on `text` until the vocabulary has `vocab_size` tokens.

        `vocab_size` counts the 256 bytes, the merges and the special tokens. Among
        equally frequent pairs, the one with the smallest ids is merged first, so the
        same text always gives the same tokenizer.
        """
        smallest = _N_BYTES + len(_specials(mask_token))
        if not _is_integer(vocab_size) or vocab_size < smallest:
            raise MinirlhfError(
                f"BPE vocab_size must be an integer of at least {smallest} (256 bytes + "
                f"{smallest - _N_BYTES} special tokens), got {vocab_size!r}"
            )
        chunk_counts = _count_chunks(text, _specials(mask_token))
        if not chunk_counts:
            raise MinirlhfError("cannot train a BPE tokenizer on empty text")
        n_merges = vocab_size - smallest
        merges = _learn_merges(chunk_counts, n_merges)
        if len(merges) < n_merges:
            raise MinirlhfError(
                f"the training text is too small for a BPE vocab_size of {vocab_size}: "
                f"after {len(merges)} merges every chunk is a single token; use a "
                f"vocab_size of at most {smallest + len(merges)}, or more text"
            )
        return cls(merges, mask_token)

    @property
    def merges(self):
        """The learned pairs, in learning order; merge k made token 256 + k."""
        return self._merges

    def token_bytes(self, token_id):
        """The bytes token `token_id` stands for; a special token gives its string's bytes.

        A token can be part of a character: "ジ" is 3 bytes, and token 0xE3 is its first.
        """
        return self._token_bytes[self._checked_ids([token_id])[0]]

    def _encode_ordinary(self, text, position):
        ids = []
        try:
            for chunk in _CHUNK.findall(text):
                chunk_ids = self._chunk_cache.get(chunk)
                if chunk_ids is None:
                    chunk_ids = self._chunk_cache[chunk] = self._encode_chunk(chunk)
                ids.extend(chunk_ids)
        except UnicodeEncodeError:  # the only str that UTF-8 cannot encode holds a lone surrogate
            offset = next(k for k, c in enumerate(text) if 0xD800 <= ord(c) <= 0xDFFF)
            raise MinirlhfError(_lone_surrogate_message(text[offset], position + offset)) from None
        return ids

    def _encode_chunk(self, chunk):
        # Replay the merges: repeatedly merge the adjacent pair that was learned
        # earliest, until no adjacent pair is a learned merge.
        ids = list(chunk.encode("utf-8"))
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: self._merge_ids.get(p, float("inf")))
            if pair not in self._merge_ids:
                break
            ids = _merge_pair(ids, pair, self._merge_ids[pair])
        return ids

    def _decode_ordinary(self, ids):
        # Bytes of neighbouring tokens are joined before decoding, because one
        # character (e.g. 3 bytes of "ジ") may be split over several tokens. A
        # sampled sequence can still be invalid UTF-8; it shows as "\ufffd".
        return b"".join(self._token_bytes[i] for i in ids).decode("utf-8", errors="replace")

    def _vocab_dict(self):
        return {"merges": [list(pair) for pair in self._merges]}


def _is_integer(value):
    try:
        operator.index(value)
    except TypeError:
        return False
    return not isinstance(value, bool)


def _count_chunks(text, specials=SPECIAL_TOKENS):
    """How often each chunk occurs in `text`; special-token strings are left out."""
    counts = Counter()
    for piece in _SPECIAL_SPLIT[specials].split(text):
        if piece not in specials:
            counts.update(_CHUNK.findall(piece))
    return counts


def _merge_pair(ids, pair, new_id):
    """Replace each occurrence of `pair` in `ids`, left to right, by `new_id`."""
    a, b = pair
    merged = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def _learn_merges(chunk_counts, n_merges):
    """The BPE training loop, on chunk counts; returns up to `n_merges` pairs.

    Recounting every pair after each merge would be slow, so the loop keeps
    `pair_counts` up to date: a merge only changes the chunks that contain the
    merged pair (`chunks_with`), and only their pairs' counts. A heap finds the
    most frequent pair; when a count changes, the new count is pushed and the old
    heap entry is ignored once it comes out ("lazy deletion").
    """
    chunks = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    weights = list(chunk_counts.values())
    pair_counts = defaultdict(int)
    chunks_with = defaultdict(set)  # pair -> indices of chunks that (may) contain it
    for index, (ids, weight) in enumerate(zip(chunks, weights)):
        for pair in zip(ids, ids[1:]):
            pair_counts[pair] += weight
            chunks_with[pair].add(index)
    # Heap entries (-count, pair): the most frequent pair comes out first and, among
    # equal counts, the pair with the smallest ids -- a deterministic tie-break.
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges = []
    while len(merges) < n_merges:
        pair = _pop_most_frequent(heap, pair_counts)
        if pair is None:  # every chunk is a single token: nothing left to merge
            break
        new_id = _N_BYTES + len(merges)
        merges.append(pair)
        # A merged pair can never form again (later merges only make pairs that
        # contain a newer token), so its entry in `chunks_with` is done with.
        count_changes = defaultdict(int)
        for index in chunks_with.pop(pair):
            old = chunks[index]
            new = _merge_pair(old, pair, new_id)
            if len(new) == len(old):  # an earlier merge already removed the pair here
                continue
            weight = weights[index]
            for old_pair in zip(old, old[1:]):
                count_changes[old_pair] -= weight
            for new_pair in zip(new, new[1:]):
                count_changes[new_pair] += weight
                chunks_with[new_pair].add(index)
            chunks[index] = new
        for changed_pair, change in count_changes.items():
            if change:
                pair_counts[changed_pair] += change
                heapq.heappush(heap, (-pair_counts[changed_pair], changed_pair))
    return merges


def _pop_most_frequent(heap, pair_counts):
    """Pop the most frequent pair, skipping entries whose count is out of date."""
    while heap:
        negative_count, pair = heapq.heappop(heap)
        if negative_count < 0 and pair_counts[pair] == -negative_count:
            return pair
    return None


# ---------------------------------------------------------------- saving and loading

TOKENIZER_KINDS = (CharTokenizer.kind, BPETokenizer.kind)


def train_tokenizer(kind, text, vocab_size=None, mask_token=False):
    """Train a tokenizer of `kind` "char" (no vocab_size: the text decides) or "bpe";
    `mask_token` adds `<|mask|>` for a masked-language model."""
    if kind == "char":
        if vocab_size is not None:
            raise MinirlhfError(
                "a character tokenizer's vocabulary is the set of characters of the "
                f"training text, so vocab_size cannot be chosen (got {vocab_size})"
            )
        return CharTokenizer.train(text, mask_token)
    if kind == "bpe":
        if vocab_size is None:
            raise MinirlhfError("a BPE tokenizer needs a vocab_size, e.g. 512 or 1024")
        return BPETokenizer.train(text, vocab_size, mask_token)
    raise MinirlhfError(f"unknown tokenizer kind {kind!r}; choose one of {_known_kinds()}")


def tokenizer_from_dict(d):
    """Rebuild a tokenizer from `Tokenizer.to_dict()` data, checking it first."""
    if not isinstance(d, dict):
        raise MinirlhfError(f"tokenizer data must be a JSON object, got {type(d).__name__}")
    kind = _field(d, "type")
    if kind not in TOKENIZER_KINDS:
        raise MinirlhfError(f'tokenizer "type" must be one of {_known_kinds()}, got {kind!r}')
    special_tokens = _field(d, "special_tokens")
    if special_tokens not in (list(SPECIAL_TOKENS), list(MLM_SPECIAL_TOKENS)):
        raise MinirlhfError(
            f'tokenizer "special_tokens" must be {list(SPECIAL_TOKENS)} (or, for a masked-language model, '
            f"{list(MLM_SPECIAL_TOKENS)}), got {special_tokens!r}"
        )
    mask_token = special_tokens == list(MLM_SPECIAL_TOKENS)
    if kind == CharTokenizer.kind:
        return CharTokenizer(_checked_chars(_field(d, "chars")), mask_token)
    return BPETokenizer(_checked_merges(_field(d, "merges")), mask_token)


def _field(d, name):
    if name not in d:
        raise MinirlhfError(f'tokenizer data has no "{name}" field')
    return d[name]


def _checked_chars(chars):
    if not isinstance(chars, list) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
        raise MinirlhfError('char tokenizer "chars" must be a list of single characters')
    if len(set(chars)) != len(chars):
        raise MinirlhfError('char tokenizer "chars" contains a character twice')
    return chars


def _checked_merges(merges):
    if not isinstance(merges, list):
        raise MinirlhfError('BPE tokenizer "merges" must be a list of [id, id] pairs')
    for k, pair in enumerate(merges):
        # Merge k may only join tokens that exist before it: bytes or earlier merges.
        valid = (
            isinstance(pair, list)
            and len(pair) == 2
            and all(type(i) is int and 0 <= i < _N_BYTES + k for i in pair)
        )
        if not valid:
            raise MinirlhfError(
                f'BPE tokenizer merge number {k} is {pair!r}; it must be a pair of '
                f"token ids below {_N_BYTES + k} (bytes or earlier merges)"
            )
    return merges


def _known_kinds():
    return ", ".join(repr(kind) for kind in TOKENIZER_KINDS)


def load_tokenizer(path):
    """Read a tokenizer saved by `Tokenizer.save`; any problem names the file."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise MinirlhfError(f"tokenizer file {os.fspath(path)} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MinirlhfError(f"cannot read tokenizer file {os.fspath(path)}: {e}") from None
    except json.JSONDecodeError as e:
        raise MinirlhfError(f"tokenizer file {os.fspath(path)} is not valid JSON: {e}") from None
    try:
        return tokenizer_from_dict(d)
    except MinirlhfError as e:
        raise MinirlhfError(f"tokenizer file {os.fspath(path)}: {e}") from None
