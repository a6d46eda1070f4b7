"""The shipped task: the gold judge's scale and the generator's determinism and disjoint splits."""
import json

from dataset import task
from dataset.sft import render_prompt


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


def test_generator_deterministic_and_disjoint(tmp_path):
    """Same seed, same files; evaluation prompts never appear among training prompts."""
    small = {k: 40 for k in task.SIZES}
    task.generate(3, str(tmp_path / "a"), small)
    task.generate(3, str(tmp_path / "b"), small)
    for name in ("sft_train", "rm_train_ranked", "eval_prompts"):
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == (tmp_path / "b" / f"{name}.jsonl").read_bytes()

    def keys(name):
        rows = [json.loads(l) for l in open(tmp_path / "a" / f"{name}.jsonl")]
        return {(r["type"], r["input"]) for r in rows if r["type"] not in ("capital", "opposite")}

    for train in ("sft_train", "rm_train_ranked", "prompts_train"):
        assert not keys(train) & keys("eval_prompts")
    assert {json.loads(l)["type"] for l in open(tmp_path / "a" / "sft_train.jsonl")} == set(task.MAIN_TYPES)


def test_ranked_responses_strictly_ordered_by_judge():
    import random
    rng = random.Random(0)
    for kind in task.MAIN_TYPES:
        inp, ans = task.make_example(kind, rng)
        scores = [task.score(prompt(kind, inp), r) for r in task.ranked_responses(kind, inp, ans, rng)]
        assert scores == [1.0, 0.6, 0.4, 0.0]
