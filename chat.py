"""Talk to a checkpoint, or to several side by side, in its own prompt format (its tokenizer's chat template).

    python chat.py --model out/rlhf                                   # interactive: type a prompt, read the answer
    python chat.py --model out/rlhf --prompt 'Add the two numbers.\\n12 and 30'   # one-shot: answer and exit
    python chat.py --compare out/sft,out/rlhf --rm out/rm             # every model answers; RM and gold scores
    printf 'Add the two numbers.\\\\n3 and 4\\n' | python chat.py --model out/sft   # prompts from stdin, one a line

Any checkpoint the project writes loads: a full or merged model dir, an adapter dir (out/sft/adapter),
or a stage's out_dir that holds only an adapter. In a typed prompt `\\n` is a line break: with the Alpaca
format the first line is the instruction and the rest its input. `/reset` forgets the conversation
(MULTI_TURN), `/quit` or end of input exits. Scores: `rm` is the reward model's score of the reply (RM),
`gold` the task's judge where the prompt is one of its instructions (dataset/task.py).
"""
import sys

import torch

from dataset.task import score_if_known
from model.generate import respond
from model.load import load_checkpoint
from model.reward import load_scorer, score_replies
from utils import configure, quiet_transformers, run_main, seed_everything

MODEL = "out/rlhf"  # the checkpoint to talk to
# comma-separated checkpoints that all answer each prompt, side by side (replaces MODEL)
COMPARE = ""
RM = "none"  # a reward model dir (out/rm) to score every reply; 'none' to skip
PROMPT = ""  # one-shot: answer this prompt and exit; empty: read prompts from the terminal or stdin
SYSTEM = ""  # a system message in front of every conversation ('' for none)
MULTI_TURN = False  # keep the conversation (each model its own); False: every prompt on its own
MAX_NEW_TOKENS = 64  # reply length limit
TEMPERATURE = 0.0  # 0: greedy; > 0: sampling at this temperature
TOP_P = 1.0  # nucleus sampling (with TEMPERATURE > 0)
SEED = 0  # sampling seed


def sampling() -> dict:
    return (
        {"do_sample": True, "temperature": TEMPERATURE, "top_p": TOP_P}
        if TEMPERATURE > 0
        else {"do_sample": False}
    )


class Session:
    """The loaded models, one conversation per model, and the optional reward model."""

    def __init__(self, paths: list[str], rm_path: str):
        self.names, self.models = paths, [
            load_checkpoint(p, "COMPARE" if COMPARE else "MODEL") for p in paths
        ]
        self.rm = None if rm_path == "none" else load_scorer(rm_path, "RM")
        self.reset()

    def reset(self) -> None:
        system = [{"role": "system", "content": SYSTEM}] if SYSTEM else []
        self.histories = [list(system) for _ in self.models]

    def ask(self, text: str) -> list[dict]:
        """Every model's reply to `text`, with its RM score and gold score (None where not applicable)."""
        results = []
        for i, (model, tokenizer) in enumerate(self.models):
            conversation = self.histories[i] + [{"role": "user", "content": text}]
            reply = respond(model, tokenizer, [conversation], MAX_NEW_TOKENS, **sampling())[0]
            rm = score_replies(*self.rm, [conversation], [reply])[0] if self.rm else None
            results.append(
                {
                    "model": self.names[i],
                    "reply": reply,
                    "rm": rm,
                    "gold": score_if_known(text, reply),
                }
            )
            if MULTI_TURN:
                self.histories[i] = conversation + [{"role": "assistant", "content": reply}]
        return results


def show(results: list[dict], side_by_side: bool) -> None:
    width = max(len(r["model"]) for r in results)
    for r in results:
        scores = "".join(f"  [{k} {r[k]:+.2f}]" if k == "rm" else f"  [{k} {r[k]:.1f}]"
                         for k in ("rm", "gold") if r[k] is not None)
        print(f"{r['model']:<{width}} | " * side_by_side + r["reply"] + scores, flush=True)


def main():
    quiet_transformers()
    seed_everything(SEED)
    torch.set_grad_enabled(False)
    paths = [p for p in COMPARE.split(",") if p] or [MODEL]
    session = Session(paths, RM)
    side_by_side = len(paths) > 1
    if PROMPT:
        return show(session.ask(PROMPT.replace("\\n", "\n")), side_by_side)
    interactive = sys.stdin.isatty()
    if interactive:
        print(
            f"chatting with {', '.join(paths)}; \\n = new line, /reset forgets the conversation, /quit exits"
        )
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":
            break
        text = line.rstrip("\n").replace("\\n", "\n")
        if text.strip() == "/reset":
            session.reset()
            continue
        if text.strip():
            show(session.ask(text), side_by_side)


if __name__ == "__main__":
    configure(globals())
    run_main(main)  # a bad path or prompt file: one line naming the setting or file:line
