"""SFT: next-token loss on the response tokens (and EOS) of instruction demonstrations.

Evaluation: the held-out loss on demonstrations, and the task judge's mean score of greedy answers
to held-out prompts (what a labeller would think of the model, not just how well it imitates), by
the Evaluator every stage uses (trainer/evaluate.py).
"""
import torch

from dataset.sft import sft_collate
from model.loss import linear_cross_entropy, lm_loss
from model.memory import chunkable_lm_head, direct_tied_grad, hidden_and_head
from model.peft.prompt_tuning import text_logits
from trainer.base import LoopConfig, OptimConfig, Trainer
from trainer.dist import reduce_sum, shard
from trainer.evaluate import Evaluator, Judge


def supervised_span(labels: torch.Tensor) -> int:
    """How many final positions of a (B, T) label batch the loss needs logits for: from the
    position before the batch's first supervised label to the end. Prompt tokens before it (in
    every row) need no logits; with a 50k vocabulary their LM-head product and softmax were a large
    share of a step."""
    supervised = (labels != -100).any(0).nonzero()
    first = int(supervised[0]) if len(supervised) else labels.size(1) - 1
    return labels.size(1) - max(first - 1, 0)


class SFTTrainer(Trainer):
    """eval_data: an SFTDataset (held-out loss) or None; eval_prompts: PromptDataset items answered
    greedily and judged by judge(row, response) (the task's), or None. eval_batch_size:
    demonstrations per forward pass of the held-out loss and prompts per generate call. lm_head_chunk
    (LM_HEAD_CHUNK): the training loss takes the LM head and cross-entropy this many supervised tokens at a
    time, without full-vocabulary logits (0: the ordinary head and loss; also where chunkable_lm_head finds
    no plain head, and under FSDP, whose head weight is a shard)."""
    lm_head_chunk = 0

    def __init__(self, model, tokenizer, train_data, eval_data, eval_prompts, *, loop: LoopConfig,
                 optim: OptimConfig, run_config: dict, max_new_tokens: int, eval_batch_size: int,
                 judge: Judge, lm_head_chunk: int = 0):
        pad_id = tokenizer.pad_token_id
        super().__init__(model, train_data, lambda items: sft_collate(items, pad_id), loop=loop,
                         optim=optim, run_config=run_config)
        self.tokenizer, self.eval_data, self.eval_prompts = tokenizer, eval_data, eval_prompts
        self.eval_batch_size = eval_batch_size
        if lm_head_chunk and not loop.fsdp and chunkable_lm_head(self.unwrap(self.model)) is not None:
            self.lm_head_chunk = lm_head_chunk
            if self.accelerator.num_processes == 1:  # the tied matrix's two gradients summed in place
                direct_tied_grad(self.unwrap(self.model))
        elif lm_head_chunk:
            self.log(f"LM_HEAD_CHUNK={lm_head_chunk}: the ordinary LM head and loss "
                     f"({'FSDP shards the head' if loop.fsdp else 'no plain lm_head on this model: a wrapper'})")
        self.evaluate_answers = Evaluator(self.accelerator, tokenizer,
                                          max_new_tokens=max_new_tokens, temperature=1.0,
                                          batch_size=eval_batch_size, judge=judge)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        return self.batch_loss(self.model, batch), {}

    def batch_loss(self, model, batch: dict) -> torch.Tensor:
        """lm_loss of `model` (the trained one, or its unwrapped self for the held-out loss) on a batch."""
        labels = batch["labels"]  # (B, T)
        keep = supervised_span(labels)  # the last `keep` positions hold every logit the loss reads
        inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
        if self.lm_head_chunk:  # the head on the supervised tokens only, a chunk of them at a time
            hidden, head = hidden_and_head(model, inputs, self.unwrap(self.model))  # (B, keep, H)
            return linear_cross_entropy(hidden, head.weight, labels[:, -keep:], self.lm_head_chunk)
        # (B, keep, V): the LM head skips the prompt span every row shares
        logits = model(**inputs).logits
        return lm_loss(text_logits(logits, labels[:, -keep:]), labels[:, -keep:])

    def loss_weight(self, batch: dict) -> float:
        """lm_loss averages over the supervised tokens (the ones that predict a label)."""
        return int((batch["labels"][:, 1:] != -100).sum())

    def eval_loss(self) -> float:
        """Mean loss over supervised tokens of the held-out demonstrations (token-weighted; the
        batches are shared out over the ranks and the sums all-reduced)."""
        total, count, model = 0.0, 0, self.unwrap(self.model)
        size = self.eval_batch_size
        starts, real = shard(self.accelerator, list(range(0, len(self.eval_data), size)))
        for j, i in enumerate(starts):  # the same count on every rank; top-ups (j >= real) add 0
            batch = sft_collate(self.eval_data.items[i: i + size], self.tokenizer.pad_token_id)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            n = int((batch["labels"][:, 1:] != -100).sum()) if j < real else 0
            total, count = total + self.batch_loss(model, batch).item() * n, count + n
        sums = reduce_sum(self.accelerator, {"total": total, "count": count})
        return sums["total"] / sums["count"]

    def evaluate(self) -> dict:
        out = {}
        if self.eval_data is not None:
            out["loss"] = self.eval_loss()
        if self.eval_prompts:
            answers = self.evaluate_answers(self.unwrap(self.model), self.eval_prompts,
                                            do_sample=False)
            out.update({k: answers[k] for k in ("gold_score", "correct", "format")})
        return out
