"""Talking to checkpoints: the saved chat template, chat.py through stdin, and eval_winrate.py."""
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import pipeline

from model.generate import answer
from model.load import load_causal_lm, load_checkpoint, load_tokenizer
from model.peft import apply_peft, save_peft
from model.reward import load_reward_model

from conftest import ROOT, run_inline

TYPED = ["Add the two numbers.\\n12 and 30", "Give the opposite of the word.\\nhot", "Name the capital city of the country.\\nPeru"]


def rows_of(typed: list[str]) -> list[dict]:
    """The shipped-task rows a typed 'instruction\\ninput' line stands for."""
    return [dict(zip(("instruction", "input"), t.split("\\n"))) for t in typed]


@pytest.fixture(scope="module")
def sft_answers(sft_dir):
    """Greedy answers of the SFT checkpoint to TYPED, rendered with the training template (dataset/sft.py)."""
    model, tok = load_causal_lm(sft_dir), load_tokenizer(sft_dir)
    return answer(model, tok, rows_of(TYPED), 64, 16)


@pytest.fixture(scope="module")
def rm_dir(sft_dir, tmp_path_factory):
    """A reward model on the SFT backbone (seeded fresh head) with the SFT tokenizer: enough to score replies."""
    out = str(tmp_path_factory.mktemp("rm"))
    tok = load_tokenizer(sft_dir)
    torch.manual_seed(0)
    load_reward_model(sft_dir, tok.pad_token_id).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def chat(*args, stdin: str = "") -> list[str]:
    proc = subprocess.run([sys.executable, "chat.py", *args], cwd=ROOT, input=stdin, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [l for l in proc.stdout.splitlines() if not l.startswith("override:")]


def test_saved_checkpoint_answers_a_message_list_in_pipeline(sft_dir, sft_answers):
    """train_sft.py saves its prompt format as the tokenizer's chat_template, so a plain transformers
    pipeline called with messages gives exactly the answers of the training-format prompt."""
    assert "### Instruction:" in load_tokenizer(sft_dir).chat_template
    generator = pipeline("text-generation", model=sft_dir)
    for text, expected in zip(TYPED, sft_answers):
        out = generator([{"role": "user", "content": text.replace("\\n", "\n")}], max_new_tokens=16, do_sample=False)
        assert out[0]["generated_text"][-1] == {"role": "assistant", "content": expected}


def test_chat_answers_prompts_typed_on_stdin_and_one_shot(sft_dir, sft_answers):
    """chat.py reads one prompt a line from stdin and prints the checkpoint's greedy answer to each
    (with the gold judge's score, since these are the task's instructions); --prompt answers one and exits."""
    lines = chat("--model", sft_dir, "--max_new_tokens", "16", stdin="\n".join(TYPED) + "\n/quit\nignored\n")
    assert len(lines) == len(TYPED)
    for line, expected, row in zip(lines, sft_answers, rows_of(TYPED)):
        from dataset.task import score
        prompt = f"### Instruction:\n{row['instruction']}\n\n### Input:\n{row['input']}\n\n### Response:\n"
        assert line == f"{expected}  [gold {score(prompt, expected):.1f}]"
    one_shot = run_inline("chat.py", "--model", sft_dir, "--max_new_tokens", "16", "--prompt", TYPED[0])
    assert [l for l in one_shot.splitlines() if not l.startswith("override:")] == lines[:1]


def test_compare_shows_every_model_with_rm_and_gold_scores(sft_dir, sft_answers, rm_dir, tmp_path):
    """--compare answers each prompt with every checkpoint, side by side, each reply with the reward
    model's score and the gold score. The second checkpoint is a fresh LoRA adapter dir of the first
    (B = 0, so it must answer and score identically): adapter dirs load like full models."""
    lora = apply_peft(load_causal_lm(sft_dir), "lora", r=4, alpha=8, targets=("q_proj", "v_proj"))
    save_peft(lora, str(tmp_path / "lora"), load_tokenizer(sft_dir))
    adapter = str(tmp_path / "lora" / "adapter")
    lines = chat("--compare", f"{sft_dir},{adapter}", "--rm", rm_dir, "--max_new_tokens", "16", stdin=TYPED[0] + "\n")
    assert len(lines) == 2 and lines[0].startswith(sft_dir) and lines[1].startswith(adapter)
    replies = [l.split(" | ", 1)[1] for l in lines]
    assert replies[0] == replies[1] and replies[0].startswith(sft_answers[0] + "  [rm ") and "[gold " in replies[0]


def test_load_checkpoint_reads_adapter_dirs_and_gives_the_merged_logits(sft_dir, tmp_path):
    """A trained LoRA adapter dir and the merged model save_peft writes beside it give the same logits."""
    lora = apply_peft(load_causal_lm(sft_dir), "lora", r=4, alpha=8, targets=("q_proj", "v_proj"))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    save_peft(lora, str(tmp_path), load_tokenizer(sft_dir))
    (adapted, tok), (merged, _) = load_checkpoint(str(tmp_path / "adapter")), load_checkpoint(str(tmp_path))
    ids = torch.tensor([tok("### Instruction:\nAdd the two numbers.")["input_ids"]])
    assert torch.allclose(adapted(ids).logits, merged(ids).logits, atol=1e-5)
    assert not torch.allclose(merged(ids).logits, load_causal_lm(sft_dir)(ids).logits, atol=1e-3)


def test_winrate_helpers_count_ties_as_half():
    """outcomes: the same reply or an equal score is a tie; win_rate is the mean with ties as 1/2 and a
    bootstrap interval around it."""
    from eval_winrate import outcomes, win_rate

    assert outcomes([1.0, 2.0, 3.0, 0.5], [2.0, 1.0, 3.0, 0.4999], ["a", "b", "c", "d"], ["x", "y", "z", "d"]) == [1.0, 0.0, 0.5, 0.5]
    result = win_rate([1.0, 1.0, 0.0, 0.5] * 10, samples=500, seed=0)
    assert result["win_rate"] == 0.625 and (result["b_wins"], result["ties"], result["a_wins"]) == (20, 10, 10)
    assert 0.45 < result["ci95"][0] < 0.625 < result["ci95"][1] < 0.8


def test_winrate_of_a_model_against_itself_is_one_half(sft_dir, rm_dir, tmp_path):
    """The same checkpoint as A and B ties on every prompt: win rate 0.5 by the reward model and by the
    gold judge, an interval that contains it, equal lengths, and one JSONL row per prompt."""
    run_inline("eval_winrate.py", "--model_a", sft_dir, "--model_b", sft_dir, "--rm", rm_dir, "--limit", "10",
               "--max_new_tokens", "12", "--bootstrap", "200", "--out_dir", str(tmp_path))
    summary = json.load(open(tmp_path / "summary.json"))
    for judge in ("rm", "gold"):
        s = summary[judge]
        assert s["win_rate"] == 0.5 and s["ties"] == 10 and s["ci95"][0] <= 0.5 <= s["ci95"][1]
    assert summary["mean_length_tokens"]["a"] == summary["mean_length_tokens"]["b"]
    pairs = [json.loads(l) for l in open(tmp_path / "pairs.jsonl")]
    assert len(pairs) == 10 and all(p["a"] == p["b"] and p["rm_a"] == p["rm_b"] for p in pairs)


def test_winrate_prefers_the_trained_model_by_gold(sft_dir, tmp_path):
    """SFT (B) against the untrained embedded model (A), which scores 0 on the gold judge: B's gold win
    rate is well above one half and its interval excludes it."""
    out = run_inline("eval_winrate.py", "--model_a", "embedded", "--model_b", sft_dir, "--rm", "none", "--limit", "30",
                     "--max_new_tokens", "12", "--bootstrap", "500", "--out_dir", str(tmp_path))
    s = json.load(open(tmp_path / "summary.json"))["gold"]
    assert s["win_rate"] > 0.6 and s["ci95"][0] > 0.5 and s["a_wins"] == 0
    assert "gold judge" in out and len(open(tmp_path / "pairs.jsonl").readlines()) == 30


def test_chat_in_a_terminal_prompts_resets_and_quits(tmp_path):
    """Run interactively in a pseudo-terminal: chat.py shows its banner and a '> ' prompt, answers a
    typed line, takes /reset, and /quit ends it with exit status 0."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child: chat.py with the terminal as stdin and stdout
        os.chdir(ROOT)
        os.environ.update(HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
        os.execv(sys.executable, [sys.executable, "chat.py", "--model", "embedded", "--max_new_tokens", "3",
                                  "--multi_turn", "True"])
    output = b""

    def read_until(marker: bytes, count: int) -> None:
        nonlocal output
        while output.count(marker) < count:
            ready, _, _ = select.select([fd], [], [], 300)
            assert ready, f"chat.py stopped answering; output so far: {output!r}"
            output += os.read(fd, 4096)

    read_until(b"> ", 1)
    os.write(fd, b"Add the two numbers.\\n1 and 2\n")
    read_until(b"> ", 2)
    os.write(fd, b"/reset\n")
    read_until(b"> ", 3)
    os.write(fd, b"/quit\n")
    _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert "chatting with embedded" in text and os.waitstatus_to_exitcode(status) == 0
    reply = text.split("> ", 2)[1].split("\r\n")[1]  # the line after the echoed prompt
    assert reply.endswith("[gold 0.0]")  # the untrained model's answer, judged
