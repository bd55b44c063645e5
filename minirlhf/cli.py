"""The `minirlhf` command: one subcommand per stage of the recipe.

Each stage's module owns its subcommand: it defines `add_parser(subparsers)`, which adds
a parser and sets `func` to the function that runs it. This file only collects them, so
the command line and the code that does the work never drift apart.

Errors the user can fix are printed as one line and exit with code 1: `MinirlhfError`, and
the operating system's refusals (`OSError`: --out names an existing file, a folder is not
writable, a path runs through a file), which name the path themselves. Ctrl-C exits with
130. Anything else is a bug and keeps its traceback.
"""
import argparse
import importlib
import sys

from minirlhf.errors import MinirlhfError

# The modules that own a subcommand, in the order `minirlhf --help` lists them.
COMMAND_MODULES = [
    "minirlhf.pipeline",
    "minirlhf.toyworld.generate",
    "minirlhf.train.pretrain",
    "minirlhf.train.sft",
    "minirlhf.train.reward",
    "minirlhf.train.ppo",
    "minirlhf.train.dpo",
    "minirlhf.train.grpo",
    "minirlhf.sample",
    "minirlhf.evaluate",
    "minirlhf.compare",
    "minirlhf.bench",
    "minirlhf.longrange",
    "minirlhf.hf",
    "minirlhf.exercises.student",
    "minirlhf.notebook_tools",
]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minirlhf",
        description="The ChatGPT recipe from scratch: pretrain a GPT, fine-tune it on "
        "demonstrations (SFT), train a reward model on rankings, optimise the policy "
        "with PPO, and evaluate it. Run `minirlhf COMMAND --help` for each step.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def os_error_text(error):
    """The OS's reason and the path: `File exists: runs/afile`, not `[Errno 17] File exists: 'runs/afile'`."""
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    return ": ".join([error.strerror or str(error)] + paths)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        args.func(args)
    except MinirlhfError as e:
        print(f"minirlhf {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"minirlhf {args.command}: error: {os_error_text(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nminirlhf {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
