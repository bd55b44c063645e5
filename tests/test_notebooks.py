"""Every notebook under notebooks/ runs top to bottom in a fresh kernel and is stored
without outputs (the policy, see minirlhf/notebook_tools.py): the ten lesson notebooks
(one per part of the article, each drawing its figures and ending with "What you saw")
and the exercises; the students' copies of the exercises run too, with every checker
saying "not implemented yet"; and the `minirlhf notebooks` command executes, writes and
strips outputs.

The kernel is `sys.executable -m ipykernel_launcher` (no installed kernelspec is used),
so the notebooks import the minirlhf under test; one test checks exactly that."""
import json
import sys

import nbformat
import pytest

from minirlhf.cli import main
from minirlhf.exercises.student import write_student_copies
from minirlhf.notebook_tools import NOTEBOOKS, execute_notebook, find_notebooks, is_stripped, read_notebook

NOTEBOOK_PATHS = find_notebooks()
LESSONS = (
    "01_the_recipe.ipynb", "02_language_modelling.ipynb", "03_lstm_limits.ipynb", "04_self_attention.ipynb",
    "05_backprop.ipynb", "06_pretraining.ipynb", "07_sft.ipynb", "08_reward_model.ipynb", "09_ppo.ipynb",
    "10_evaluation.ipynb",
)


def errors(cell):
    return [out for out in cell.get("outputs", []) if out.output_type == "error"]


def text_of(cell):
    return "".join(out.get("text", "") + out.get("data", {}).get("text/plain", "") for out in cell.outputs)


def test_the_exercise_notebooks_are_found():
    names = {p.relative_to(NOTEBOOKS).as_posix() for p in NOTEBOOK_PATHS}
    assert {"exercises/01_attention.ipynb", "exercises/02_backprop.ipynb", "exercises/03_rlhf_losses.ipynb"} <= names


def test_the_lesson_notebooks_are_found():
    names = {p.relative_to(NOTEBOOKS).as_posix() for p in NOTEBOOK_PATHS}
    assert set(LESSONS) <= names


@pytest.mark.parametrize("name", LESSONS)
def test_a_lesson_ends_with_what_you_saw(name):
    last = read_notebook(NOTEBOOKS / name).cells[-1]
    assert last.cell_type == "markdown" and "## What you saw" in last.source.splitlines(), last.source[-200:]


def images(nb):
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs if "image/png" in out.get("data", {})]


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.relative_to(NOTEBOOKS).as_posix())
def test_notebook_executes(path):
    nb = execute_notebook(path)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith("check_"):
            checker = cell.source.split("(")[0]
            assert f"✓ {checker} passed." in text_of(cell)
    if path.parent == NOTEBOOKS and path.name in LESSONS:  # its figures are drawn inline (minirlhf.plots' Agg backend would hide them)
        assert images(nb), f"{path.name}: no figure was shown"


def test_notebooks_are_stored_without_outputs():
    with_outputs = [str(p) for p in NOTEBOOK_PATHS if not is_stripped(read_notebook(p))]
    assert not with_outputs, f"run `minirlhf notebooks --strip` before committing: {with_outputs}"


def test_student_copies_run_and_every_checker_says_not_implemented(tmp_path):
    write_student_copies(tmp_path, log=lambda _: None)
    checked = 0
    for path in find_notebooks([tmp_path]):
        nb = execute_notebook(path, allow_errors=True)
        for cell in nb.cells:
            if cell.cell_type != "code" or not errors(cell):
                continue
            (error,) = errors(cell)
            if cell.source.startswith("check_"):
                assert error.ename == "ExerciseError" and "not implemented yet" in error.evalue, error.evalue
                checked += 1
            else:  # a cell that uses the student's functions directly
                assert error.ename == "NotImplementedError", f"{path.name}: {cell.source}\n{error.evalue}"
    assert checked == 13


def test_the_command_executes_keeps_outputs_and_strips(tmp_path, capsys, monkeypatch):
    # An installed "python3" kernelspec of another Python, found first, must not be used.
    elsewhere = tmp_path / "jupyter" / "kernels" / "python3"
    elsewhere.mkdir(parents=True)
    (elsewhere / "kernel.json").write_text(json.dumps(
        {"argv": ["/nonexistent/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
         "display_name": "another Python", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # searched before every other place
    path = tmp_path / "tiny.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import sys\nimport minirlhf\nprint(sys.executable)"),
                nbformat.v4.new_code_cell("open('here.txt', 'w').write('the notebook folder')")]
    nbformat.write(nb, path)
    assert main(["notebooks", "--execute", "--inplace", str(path)]) == 0
    assert "ok  " in capsys.readouterr().out
    executed = nbformat.read(path, as_version=4)
    assert executed.cells[0].outputs[0].text.strip() == sys.executable  # the kernel is this Python
    assert (tmp_path / "here.txt").exists()  # and runs in the notebook's folder
    assert not is_stripped(executed)
    assert main(["notebooks", "--strip", str(tmp_path)]) == 0
    assert is_stripped(nbformat.read(path, as_version=4))
    assert "stripped" in capsys.readouterr().out


def test_a_failing_cell_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "broken.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# broken"), nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell("\nraise ValueError('boom')")]
    nbformat.write(nb, path)
    assert main(["notebooks", "--execute", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: cell 3 (raise ValueError('boom')) raised ValueError: boom" in err
    assert "Traceback" not in err
    assert main(["notebooks", "--strip", str(tmp_path / "missing.ipynb")]) == 1
    assert f"{tmp_path / 'missing.ipynb'}: no such file or folder" in capsys.readouterr().err


@pytest.mark.parametrize("text, says", [
    ("[]", "not a notebook: its JSON is not an object"),
    ('{"cells": "x", "nbformat": 4}', "not a valid notebook"),
    ('{"nbformat": 4}', "not a valid notebook (top level): The notebook is invalid and is missing an expected key: cells"),
])
@pytest.mark.parametrize("action", ["--strip", "--execute"])
def test_json_that_is_not_a_notebook_is_a_one_line_error(tmp_path, capsys, text, says, action):
    path = tmp_path / "bad.ipynb"
    path.write_text(text)
    assert main(["notebooks", action, str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: {says}" in err and "Traceback" not in err, err


def test_one_bad_notebook_in_a_folder_stops_the_strip_before_anything_is_written(tmp_path, capsys):
    good = tmp_path / "a.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("1 + 1", outputs=[nbformat.v4.new_output("stream", text="2")])]
    nbformat.write(nb, good)
    (tmp_path / "b.ipynb").write_text("[]")
    assert main(["notebooks", "--strip", str(tmp_path)]) == 1
    assert f"{tmp_path / 'b.ipynb'}: not a notebook" in capsys.readouterr().err
    assert not is_stripped(nbformat.read(good, as_version=4))  # a.ipynb came first, and is untouched


def test_a_folder_without_notebooks_is_an_error(tmp_path, capsys):
    assert main(["notebooks", "--strip", str(tmp_path)]) == 1
    assert f"{tmp_path}: no notebooks (.ipynb) in this folder" in capsys.readouterr().err
