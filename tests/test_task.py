"""The shipped task: the gold judge's scale and the generator's determinism and disjoint splits."""
import json

from dataset import task, task_data
from dataset.chat import render_prompt


def prompt(kind, inp):
    return render_prompt({"instruction": task.INSTRUCTIONS[kind], "input": inp})


def test_judge_scale():
    """Correct + preferred format = 1.0; correct bare = 0.6; wrong in format = 0.4; rambling = 0."""
    p = prompt("add", "12 and 30")
    assert task.score(p, "The answer is 42.") == 1.0
    assert task.score(p, "42") == 0.6 and task.score(p, "42, I think.") == 0.6
    assert task.score(p, "The answer is 41.") == 0.4
    assert task.score(p, "The answer is 42. The answer is 42.") == 0.0
    assert task.score(p, "The answer is The answer is 42.") == 0.0  # a reward hack seen in PPO: not the preferred form
    assert task.score(prompt("sort", "9 1 5"), "The answer is 1 5 9.") == 1.0
    assert task.score(prompt("capital", "Mexico"), "Mexico City") == 0.6


def split_contents(folder) -> dict:
    """{split: (prompts, comparisons)} over every file of a data folder: exact prompt texts and exact
    (prompt, chosen, rejected) triples (every ordered pair of a ranked row, and each pairs row)."""
    out = {split: (set(), set()) for split in task_data.SPLITS}
    for path in sorted(folder.glob("*.jsonl")):
        prompts, pairs = out[task_data.split_of(path.stem)]
        for line in open(path, encoding="utf-8"):
            row = json.loads(line)
            text = task.row_text(row)
            prompts.add(text)
            ranked = row.get("responses") or []
            pairs.update((text, a, b) for i, a in enumerate(ranked) for b in ranked[i + 1:])
            if "chosen" in row:
                pairs.add((text, row["chosen"], row["rejected"]))
    return out


def assert_disjoint(folder):
    contents = split_contents(folder)
    assert all(contents[s][0] for s in task_data.SPLITS), "a split has no files"
    for i, a in enumerate(task_data.SPLITS):
        for b in task_data.SPLITS[i + 1:]:
            shared = contents[a][0] & contents[b][0]
            assert not shared, f"{len(shared)} prompts in both {a} and {b}, e.g. {sorted(shared)[:2]}"
            assert not contents[a][1] & contents[b][1], f"comparisons in both {a} and {b}"


def test_shipped_splits_disjoint():
    """No exact prompt and no (prompt, chosen, rejected) of ds/ in two of train, val and test."""
    from pathlib import Path
    assert_disjoint(Path(__file__).resolve().parents[1] / "ds")


def test_split_check_catches_a_leak(tmp_path):
    """The check itself fails when one test prompt is copied into a training file."""
    import pytest
    task_data.generate(5, str(tmp_path), {k: 30 for k in task_data.SIZES})
    test_row = open(tmp_path / "prompts_test.jsonl").readline()
    with open(tmp_path / "prompts_train.jsonl", "a") as f:
        f.write(test_row)
    with pytest.raises(AssertionError, match="prompts in both train and test"):
        assert_disjoint(tmp_path)


def test_generator_deterministic_and_disjoint(tmp_path):
    """Same seed, same files; a regenerated task (another seed) keeps its three splits disjoint,
    lookup kinds included (each split has its own countries and words)."""
    small = {k: 60 for k in task_data.SIZES}
    task_data.generate(3, str(tmp_path / "a"), small)
    task_data.generate(3, str(tmp_path / "b"), small)
    for name in ("sft_train", "rm_train_ranked", "prompts_test", "prompts_val"):
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == (tmp_path / "b" / f"{name}.jsonl").read_bytes()
    assert_disjoint(tmp_path / "a")
    task_data.generate(1, str(tmp_path / "c"))  # full size, as `python -m dataset.task_data --seed 1` writes it
    assert_disjoint(tmp_path / "c")
    test_types = [json.loads(l)["type"] for l in open(tmp_path / "c" / "prompts_test.jsonl")]
    assert {t: test_types.count(t) for t in set(test_types)} == {t: 200 for t in task.MAIN_TYPES}
    pools = task_data.item_pools(1)
    for kind in ("capital", "opposite"):
        assert not set(pools["train"][kind]) & set(pools["test"][kind])
        assert not set(pools["val"][kind]) & set(pools["test"][kind])
    assert {json.loads(l)["type"] for l in open(tmp_path / "a" / "sft_train.jsonl")} == set(task.MAIN_TYPES)


def test_ranked_responses_strictly_ordered_by_judge():
    import random
    rng = random.Random(0)
    for kind in task.MAIN_TYPES:
        inp, ans = task.make_example(kind, rng)
        scores = [task.score(prompt(kind, inp), r) for r in task_data.ranked_responses(kind, inp, ans, rng)]
        assert scores == [1.0, 0.6, 0.4, 0.0]
