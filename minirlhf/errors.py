"""The one exception type the command line turns into a clean one-line error.

Anything the user can get wrong (a missing file, a malformed JSONL line, an unknown
character, a checkpoint from another vocabulary) raises `MinirlhfError` with a message
that names the file, line or shape at fault. `minirlhf.cli` prints it and exits 1;
library users can catch it like any other exception.
"""


class MinirlhfError(Exception):
    """A problem with the user's input, described in words the user can act on."""
