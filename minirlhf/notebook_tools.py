"""Run the project's notebooks, and keep them stored without outputs.

The policy: notebooks are committed *stripped* — no outputs, no execution counts — so a
diff shows only what someone wrote, and nothing stale is ever shown as a result. Their
outputs are one command away:

    minirlhf notebooks --execute                    # run every notebook under notebooks/ (a check)
    minirlhf notebooks --execute --inplace PATH     # run it and keep the outputs, to read them
    minirlhf notebooks --strip                      # before committing: drop the outputs again

The test suite executes every notebook under notebooks/ (tests/test_notebooks.py) and
fails if one is stored with outputs.

The kernel is always the Python running this command (sys.executable, through
ipykernel), whatever kernelspecs are installed: a notebook then imports the same
minirlhf, from the same environment, as the tests. Needs nbclient and ipykernel
(`pip install -e ".[test]"`).
"""
import subprocess
import sys
import time
from pathlib import Path

from minirlhf.errors import MinirlhfError
from minirlhf.flags import non_negative_int

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT = 300  # seconds one cell may run before the notebook counts as failed


def find_notebooks(paths=None):
    """The .ipynb files named by `paths` (files, or folders searched recursively; default
    the repository's notebooks/), sorted, skipping Jupyter's .ipynb_checkpoints copies."""
    found = []
    for path in map(Path, paths or [NOTEBOOKS]):
        if path.is_dir():
            inside = [p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts]
            if not inside:  # a typo in the folder would otherwise "succeed" at doing nothing
                raise MinirlhfError(f"{path}: no notebooks (.ipynb) in this folder")
            found += inside
        elif not path.exists():
            raise MinirlhfError(f"{path}: no such file or folder")
        elif path.suffix == ".ipynb" and path.is_file():
            found.append(path)
        else:
            raise MinirlhfError(f"{path}: not a notebook (.ipynb) or a folder")
    return sorted(found)


def strip_outputs(nb):
    """Remove outputs, execution counts and nbclient's timing metadata, in place.
    Returns True if anything changed."""
    changed = False
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if cell.outputs or cell.execution_count is not None or "execution" in cell.metadata:
            changed = True
        cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    return changed


def is_stripped(nb):
    return all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in nb.cells if cell.cell_type == "code")


def _nb_modules():
    try:
        import nbclient
        import nbformat
    except ImportError as e:
        raise MinirlhfError(f"notebooks need nbformat, nbclient and ipykernel ({e}): pip install -e \".[test]\"")
    return nbformat, nbclient


def read_notebook(path):
    """The notebook at `path`, checked against nbformat's schema, so that JSON which is not
    a notebook (a list, "cells" that is not a list, an unknown cell type) is refused here,
    naming the file, rather than failing deep inside a strip or an execution."""
    nbformat, _ = _nb_modules()
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except (OSError, ValueError) as e:  # nbformat's NotJSONError is a ValueError
        raise MinirlhfError(f"{path}: cannot read the notebook: {e}") from None
    except AttributeError:  # nbformat reads the version with .get(): the JSON is not an object
        raise MinirlhfError(f"{path}: not a notebook: its JSON is not an object") from None
    except nbformat.ValidationError as e:
        where = "/".join(map(str, e.path)) or "top level"
        message = e.message if len(e.message) <= 120 else e.message[:117] + "..."
        raise MinirlhfError(f"{path}: not a valid notebook ({where}): {message}") from None
    return nb


def _kernel_manager_class():
    """An AsyncKernelManager whose "python3" kernel is `sys.executable -m ipykernel_launcher`,
    so no installed kernelspec (possibly another Python's) is ever used."""
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from traitlets import default

    class ThisPythonSpecs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
            return KernelSpec(argv=argv, display_name="Python 3", language="python")

    class ThisPythonKernel(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _this_python_specs(self):
            return ThisPythonSpecs()

        async def start_kernel(self, **kw):
            # The kernel process's own log, not the cells' output (that comes as messages):
            # a transport warning at every start, and a traceback when a timed-out cell's
            # kernel is shut down mid-reply. The error that matters is ours, in one line.
            kw.setdefault("stderr", subprocess.DEVNULL)
            return await super().start_kernel(**kw)

    return ThisPythonKernel


def execute_notebook(path, timeout=CELL_TIMEOUT, allow_errors=False):
    """Run every cell of the notebook at `path` in a fresh kernel started in its folder.

    Returns the executed notebook (the file is not changed). A cell that raises makes it
    a MinirlhfError naming the notebook, the cell and the error — unless allow_errors,
    when the errors are left in the cells' outputs and execution goes on.
    """
    _, nbclient = _nb_modules()
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    path = Path(path)
    nb = read_notebook(path)
    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
        kernel_manager_class=_kernel_manager_class(), resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        client.execute()
    except CellExecutionError as e:
        index, cell = _first_error(nb)
        raise MinirlhfError(f"{path}: cell {index} ({_first_line(cell)}) raised {e.ename}: {e.evalue}") from None
    except CellTimeoutError:
        raise MinirlhfError(f"{path}: a cell ran longer than {timeout} s (raise --timeout if it should)") from None
    except DeadKernelError as e:
        raise MinirlhfError(f"{path}: the kernel died: {e}") from None
    except RuntimeError as e:  # nbclient's "Kernel didn't respond": it never started
        raise MinirlhfError(f"{path}: no kernel ({sys.executable} -m ipykernel_launcher): {e}") from None
    return nb


def _first_error(nb):
    for i, cell in enumerate(nb.cells, start=1):
        if any(out.get("output_type") == "error" for out in cell.get("outputs", [])):
            return i, cell
    return "?", {"source": ""}


def _first_line(cell):
    lines = [line for line in cell["source"].splitlines() if line.strip()]
    return (lines[0][:60] if lines else "empty").strip()


def execute_notebooks(paths=None, inplace=False, timeout=CELL_TIMEOUT, log=print):
    """Execute each notebook; with `inplace`, write it back with its outputs."""
    nbformat, _ = _nb_modules()
    for path in find_notebooks(paths):
        start = time.perf_counter()
        nb = execute_notebook(path, timeout)
        if inplace:
            nbformat.write(nb, path)
        log(f"ok  {path}  ({time.perf_counter() - start:.1f} s{', outputs written' if inplace else ''})")


def strip_notebooks(paths=None, log=print):
    """Strip each notebook's outputs, rewriting only the files that had some."""
    nbformat, _ = _nb_modules()
    notebooks = [(path, read_notebook(path)) for path in find_notebooks(paths)]  # all valid before any is written
    for path, nb in notebooks:
        if strip_outputs(nb):
            nbformat.write(nb, path)
            log(f"stripped  {path}")


def add_parser(subparsers):
    p = subparsers.add_parser(
        "notebooks",
        help="execute the notebooks, or strip their outputs",
        description="Execute notebooks in a fresh kernel of this Python (a check that they run; with --inplace "
        "their outputs are written into them), or strip their outputs. Notebooks are committed stripped. "
        "PATHS are notebooks or folders; the default is the repository's notebooks/.",
    )
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--execute", action="store_true", help="run every cell; fail on the first error")
    action.add_argument("--strip", action="store_true", help="remove outputs and execution counts")
    p.add_argument("paths", nargs="*", type=Path, metavar="PATHS", help="notebooks or folders (default: notebooks/)")
    p.add_argument("--inplace", action="store_true", help="with --execute: save the outputs into the notebooks")
    p.add_argument("--timeout", type=non_negative_int, default=CELL_TIMEOUT, help="seconds one cell may run (0: no limit)")
    p.set_defaults(func=run)


def run(args):
    if args.inplace and not args.execute:
        raise MinirlhfError("--inplace goes with --execute")
    if args.execute:
        execute_notebooks(args.paths, args.inplace, args.timeout)
    else:
        strip_notebooks(args.paths)
