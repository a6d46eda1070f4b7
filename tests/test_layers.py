"""Imports run one way: scripts -> trainer -> model -> dataset -> utils, and the task reaches the trainers
only as functions the scripts pass in. Checked on the source (every import statement, also those inside
functions), so a shortcut added anywhere fails here before it tangles the layers."""
import ast
import glob
import os

from conftest import ROOT

# a module may import its own layer or lower ones
LAYERS = {"trainer": 3, "model": 2, "dataset": 1, "utils": 0}
# the top-level scripts (train_*.py, chat.py, ...): they wire everything, so they may import anything
SCRIPT = 4


def project_imports(path: str) -> list[tuple[int, str]]:
    """(line, module) of every import of a project module in the file, except under `if __name__ == "__main__":`
    (a module's command line is a script)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else (
                [node.module]
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                else []
            )
        )
        found += [(node.lineno, name) for name in names if name.split(".")[0] in LAYERS]
    return found


def layer_of(path: str) -> int:
    rel = os.path.relpath(path, ROOT)
    top = rel.split(os.sep)[0]
    return SCRIPT if top.endswith(".py") else LAYERS[top]


def package_files() -> list[str]:
    files = glob.glob(os.path.join(ROOT, "*.py"))
    for package in ("trainer", "model", "dataset", "utils"):
        files += glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True)
    return sorted(set(files))


def test_imports_run_one_way():
    """No module imports a layer above its own: dataset never imports model, model never trainer, ..."""
    wrong = [f"{os.path.relpath(path, ROOT)}:{line} imports {name}"
             for path in package_files() for line, name in project_imports(path)
             if LAYERS[name.split(".")[0]] > layer_of(path)]
    assert not wrong, "\n".join(wrong)


def test_the_task_is_passed_in_not_imported():
    """trainer/ and model/ never import the shipped task (dataset/task.py): the scripts pass its judge in."""
    wrong = [
        f"{os.path.relpath(path, ROOT)}:{line}"
        for path in package_files()
        if layer_of(path) in (2, 3)
        for line, name in project_imports(path)
        if name == "dataset.task"
    ]
    assert not wrong, wrong


def test_the_layer_check_sees_hidden_and_upward_imports(tmp_path):
    """The checker itself: an import hidden in a function counts; one under __main__ does not."""
    path = tmp_path / "m.py"
    path.write_text(
        "import os\nfrom dataset.tokens import pad\n\ndef f():\n    from trainer.ppo import PPOTrainer\n\n"
        "if __name__ == '__main__':\n    from dataset.task import gold_judge\n"
    )
    assert project_imports(str(path)) == [(2, "dataset.tokens"), (5, "trainer.ppo")]


def test_the_base_trainer_imports_no_model():
    """trainer/base.py is the generic loop (steps, backward, clipping, logging, checkpoints): it imports
    nothing from model/, so it knows nothing about RLHF and any model and loss can be plugged into it."""
    path = os.path.join(ROOT, "trainer", "base.py")
    wrong = [f"trainer/base.py:{line} imports {name}" for line, name in project_imports(path)
             if name.split(".")[0] == "model"]
    assert not wrong, "\n".join(wrong)


def test_the_generic_data_modules_do_not_import_the_task():
    """The helpers every stage and model/ use (padding and truncation, row reading, the prompt formats)
    never import the shipped task, so swapping in another task leaves them untouched."""
    generic = ("tokens.py", "io.py", "chat.py", "trl_formats.py")
    wrong = [
        f"dataset/{name}:{line}"
        for name in generic
        for line, module in project_imports(os.path.join(ROOT, "dataset", name))
        if module == "dataset.task"
    ]
    assert not wrong, wrong


def test_the_peft_comparison_arm_is_given_its_judge():
    """bench/peft_compare.py (one arm of train_peft.py's comparison) takes the judge as an argument;
    only its command line, the script part, picks the shipped task's."""
    path = os.path.join(ROOT, "bench", "peft_compare.py")
    assert "dataset.task" not in [name for _, name in project_imports(path)]
