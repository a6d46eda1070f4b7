"""REWARD=FILE.py:FUNCTION: TRL-style reward functions from a file, weighted, with their returns checked."""
import json

import pytest

from conftest import run_inline, run_refused
from dataset.task import gold_judge, judge
from model.reward_functions import reward_functions
from utils import ConfigError, UserError

ROWS = [{"type": "add", "instruction": "Add the two numbers.", "input": "2 and 24"},
        {"type": "sort", "instruction": "Sort the numbers from smallest to largest.", "input": "62 21 32"}]
REPLIES = ["The answer is 26.", "21 32 62"]
TASK = "examples/task_rewards.py"


def test_task_rewards_are_the_judges_checks_weighted():
    """correct + 0.2 * formatted, as the gold judge checks them: 1.2 for the right answer in the preferred
    form, 1.0 for the right answer bare."""
    fn = reward_functions(f"{TASK}:correct,{TASK}:formatted", "1.0,0.2")
    assert fn(ROWS, REPLIES) == pytest.approx([1.2, 1.0])
    assert fn(ROWS, ["The answer is 27.", "no"]) == pytest.approx([0.2, 0.0])
    text = ROWS[0]["instruction"] + "\n" + ROWS[0]["input"]
    assert judge(text, REPLIES[0])["correct"] == 1.0


def test_function_gets_prompts_completions_and_row_fields_trl_style(tmp_path):
    """Text rows: rendered prompt text and reply text; conversational rows: the messages and
    [{"role": "assistant", ...}]; every other field as a keyword argument, None where a row lacks it."""
    calls = tmp_path / "calls.json"
    path = tmp_path / "rewards.py"
    path.write_text("import json\n"
                    "def spy(prompts, completions, **kwargs):\n"
                    f"    json.dump(dict(prompts=prompts, completions=completions, **kwargs), open({str(calls)!r}, 'w'))\n"
                    "    return [len(str(c)) for c in completions]\n")
    rows = [ROWS[0], {"messages": [{"role": "user", "content": "Hi"}], "answer": "42"}]
    scores = reward_functions(f"{path}:spy", "")(rows, ["a", "b"])
    seen = json.load(open(calls))
    assert seen["prompts"][0].startswith("### Instruction:\nAdd the two numbers.")
    assert seen["prompts"][1] == [{"role": "user", "content": "Hi"}]
    assert seen["completions"] == ["a", [{"role": "assistant", "content": "b"}]]
    assert seen["type"] == ["add", None] and seen["answer"] == [None, "42"] and seen["input"] == ["2 and 24", None]
    assert scores == [1.0, len(str([{"role": "assistant", "content": "b"}]))]


@pytest.mark.parametrize("body,match", [("return [1.0]", "returned 1 values for 2 completions"),
                                        ("return [1.0, float('nan')]", "value 1 is nan"),
                                        ("return ['a', 1.0]", "value 0 is 'a', not a number"),
                                        ("return 1.0", "returned float")])
def test_bad_returns_stop_with_one_line_naming_the_function(tmp_path, body, match):
    path = tmp_path / "bad.py"
    path.write_text(f"def f(prompts, completions, **kwargs):\n    {body}\n")
    with pytest.raises(UserError, match=match) as e:
        reward_functions(f"{path}:f", "")(ROWS, REPLIES)
    assert "reward function bad.py:f" in str(e.value) and "\n" not in str(e.value)


def test_names_and_settings_checked():
    assert reward_functions("rm", "") is None
    with pytest.raises(ConfigError, match="no gold judge"):
        reward_functions("gold", "")
    assert reward_functions("gold", "", gold_judge)(ROWS, REPLIES) == pytest.approx([1.0, judge(
        ROWS[1]["instruction"] + "\n" + ROWS[1]["input"], REPLIES[1])["score"]])
    for spec, weights, match in [("rm,gold", "", "cannot be combined"), ("nofile.py:f", "", "no file"),
                                 (f"{TASK}:nothing", "", "no function"), ("bleu", "", "FILE.py:FUNCTION"),
                                 (f"{TASK}:correct", "1,2", "2 weights for 1")]:
        with pytest.raises(ConfigError, match=match):
            reward_functions(spec, weights)


def grpo_args(out, reward, *extra):
    return ["train_rlhf.py", "--algo", "grpo", "--sft_model", "embedded", "--reward", reward, "--iterations", "1",
            "--rollout_batch", "8", "--group_size", "4", "--mini_batch", "4", "--max_new_tokens", "6",
            "--eval_prompts", "none", "--test_prompts", "none", "--save_interval", "0", "--out_dir", str(out), *extra]


def test_grpo_on_verifiable_rewards_from_the_command_line(tmp_path):
    """RLVR from the command line: GRPO with the example's judge functions as the reward, no reward model."""
    run_inline(*grpo_args(tmp_path, f"{TASK}:correct,{TASK}:formatted", "--reward_weights", "1,0.2"))
    metrics = [m for m in map(json.loads, open(tmp_path / "metrics.jsonl")) if "grpo/score" in m]
    assert len(metrics) == 1 and 0.0 <= metrics[0]["grpo/score"] <= 1.2


def test_bad_reward_function_exits_with_one_line(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("def f(prompts, completions, **kwargs):\n    return [0.0]\n")
    code, err = run_refused(*grpo_args(tmp_path / "out", f"{path}:f"))
    assert code == 1, err[-2000:]
    said = err[err.find("error:"):].splitlines()[0]  # progress bars (unless TQDM_DISABLE=1) share stderr
    assert said.startswith("error: reward function bad.py:f: returned 1 values") and said.endswith(")"), err[-2000:]
