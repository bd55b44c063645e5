"""`minirlhf exercises --student DIR`: the students' copies of the exercise notebooks.

The notebooks in notebooks/exercises/ are the solutions, written nbgrader-style: in a
code cell, the lines between

        ### BEGIN SOLUTION
        ...the answer...
        ### END SOLUTION

are the answer. The student copy replaces each such region (markers included) by a stub
at the same indentation,

        # YOUR CODE HERE
        raise NotImplementedError("fill in softmax_backward")

which the checkers report as "not implemented yet", and drops every output. Everything
else — prose, skeletons, checker calls — is kept as it is.
"""
import copy
import re
from pathlib import Path

from minirlhf.errors import MinirlhfError
from minirlhf.notebook_tools import NOTEBOOKS, find_notebooks, read_notebook, strip_outputs

SOLUTIONS = NOTEBOOKS / "exercises"
BEGIN = re.compile(r"^(\s*)### BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*### END SOLUTION\s*$")
DEF = re.compile(r"^(\s*)def (\w+)\(")


def _enclosing_function(lines, indent):
    """The name of the innermost `def` above, less indented than the solution region."""
    for line in reversed(lines):
        m = DEF.match(line)
        if m and len(m.group(1)) < len(indent):
            return m.group(2)
    return None


def strip_solutions(source, where):
    """A code cell's source with every marked solution region replaced by a stub.
    where: "file: cell n", for the error on unbalanced markers."""
    out, indent = [], None
    for number, line in enumerate(source.splitlines(keepends=True), start=1):
        begin = BEGIN.match(line)
        if indent is None and begin:
            indent = begin.group(1)
            name = _enclosing_function(out, indent)
            out += [f"{indent}# YOUR CODE HERE\n",
                    f'{indent}raise NotImplementedError("fill in {name or "this part"}")\n']
        elif indent is None and END.match(line):
            raise MinirlhfError(f"{where}: line {number}: ### END SOLUTION without a ### BEGIN SOLUTION before it")
        elif indent is not None and begin:
            raise MinirlhfError(f"{where}: line {number}: ### BEGIN SOLUTION inside another solution region")
        elif indent is not None and END.match(line):
            indent = None
        elif indent is None:
            out.append(line)
    if indent is not None:
        raise MinirlhfError(f"{where}: a ### BEGIN SOLUTION region is never closed by ### END SOLUTION")
    stripped = "".join(out)
    return stripped if source.endswith("\n") else stripped.rstrip("\n")


def student_notebook(nb, name):
    """A student copy of the solution notebook `nb` (a new object; `name` is for errors)."""
    student = copy.deepcopy(nb)
    for number, cell in enumerate(student.cells, start=1):
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source, f"{name}: cell {number}")
    strip_outputs(student)
    return student


def write_student_copies(out_dir, solutions=SOLUTIONS, overwrite=False, log=print):
    """Write the student copy of every notebook in `solutions` into `out_dir`.

    Refuses to write into the solutions folder (or below it), and, unless `overwrite`,
    to replace a notebook already in out_dir: it may hold a student's work.
    Returns the paths written."""
    import nbformat

    out_dir, solutions = Path(out_dir).resolve(), Path(solutions).resolve()
    if out_dir == solutions or solutions in out_dir.parents:
        raise MinirlhfError(f"{out_dir}: refusing to write student copies into the solutions folder {solutions}")
    if not solutions.is_dir():
        raise MinirlhfError(f"{solutions}: no such folder (the solution notebooks come with the repository; "
                            "pass --solutions)")
    sources = find_notebooks([solutions])  # refuses a folder without notebooks
    if not overwrite:
        existing = [out_dir / p.name for p in sources if (out_dir / p.name).exists()]
        if existing:
            raise MinirlhfError(f"{existing[0]} already exists and may hold your work; "
                                "choose another folder, or pass --force to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sources:
        target = out_dir / path.name
        nbformat.write(student_notebook(read_notebook(path), path.name), target)
        written.append(target)
    log(f"wrote {len(written)} student notebooks to {out_dir}")
    return written


def add_parser(subparsers):
    p = subparsers.add_parser(
        "exercises",
        help="write the students' copies of the exercise notebooks",
        description="Write the exercise notebooks with every solution (the code between ### BEGIN SOLUTION and "
        "### END SOLUTION) replaced by `raise NotImplementedError`, for students to fill in. "
        "Each exercise ends with a checker that says what is wrong.",
    )
    p.add_argument("--student", type=Path, required=True, metavar="DIR", help="folder to write the copies into")
    p.add_argument("--solutions", type=Path, default=SOLUTIONS, help="folder of solution notebooks")
    p.add_argument("--force", action="store_true", help="replace notebooks already in DIR")
    p.set_defaults(func=run)


def run(args):
    write_student_copies(args.student, args.solutions, overwrite=args.force)
