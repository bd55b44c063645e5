"""Sentence templates that can be both written and read.

The toy world talks in a small number of fixed sentence shapes ("{name} lives in
{value}", "reverse the words: {words}"). The same `Template` object *writes* sentences
(for the corpus, the prompts and the labeler's demonstrations) and *reads* them back
(the labeler parsing a prompt or a response). Because writing and reading share one
definition, a sentence the world can say is always a sentence the labeler can judge --
the program equivalent of a human labeler who speaks the language of the prompts.
"""
import re

# What a slot may contain when a template is read back: one lowercase word, unless
# it is a `words` slot (a space-separated list) or `text`/`start` (anything on the line).
WORD = r"[a-z]+"
SLOT_PATTERNS = {"words": r"[a-z]+(?: [a-z]+)*", "text": r".+", "start": r".+"}


class Template:
    """A sentence shape with named slots, e.g. ``Template("{name} lives in {value}")``.

    >>> t = Template("{name} lives in {value}")
    >>> t.render(name="jacob", value="paris")
    'jacob lives in paris'
    >>> t.match("jacob lives in paris")
    {'name': 'jacob', 'value': 'paris'}
    >>> t.match("jacob lives near paris") is None
    True
    """

    __slots__ = ("text", "regex")

    def __init__(self, text):
        self.text = text
        # re.split with a capturing group alternates literal text and slot names.
        parts = re.split(r"\{(\w+)\}", text)
        pattern = "".join(
            f"(?P<{part}>{SLOT_PATTERNS.get(part, WORD)})" if i % 2 else re.escape(part)
            for i, part in enumerate(parts)
        )
        self.regex = re.compile(pattern)

    def render(self, **slots):
        return self.text.format(**slots)

    def match(self, sentence):
        """The slots of `sentence` as a dict if the whole sentence fits, else None."""
        found = self.regex.fullmatch(sentence)
        return found.groupdict() if found else None

    def __repr__(self):
        return f"Template({self.text!r})"


def templates(*texts):
    """A tuple of templates; the first is the canonical way to say the thing."""
    return tuple(Template(text) for text in texts)


def match_any(options, sentence):
    """The first template of `options` that reads `sentence`: (index, slots) or None."""
    for index, template in enumerate(options):
        slots = template.match(sentence)
        if slots is not None:
            return index, slots
    return None
