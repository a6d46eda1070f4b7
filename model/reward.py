"""Reward model and critic: a causal-LM backbone plus a scalar head (`AutoModelForSequenceClassification`,
num_labels=1), so a saved reward model loads in any tool with
`AutoModelForSequenceClassification.from_pretrained(dir)`.

* reward: the head's output at the last non-pad token of (prompt + response) -> one score per row.
  transformers takes the rightmost token that is not the pad id, which is right for left and right
  padding alike (the pad id must never equal EOS: OPT pads with 1, EOS is 2).
* critic (PPO): the same head applied at every position -> one value per token.
"""
import torch
from transformers import AutoModelForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

from dataset.chat import encode_text, reply_text, use_chat_format
from dataset.tokens import pad
from model.generate import position_ids_for
from model.load import from_pretrained, load_tokenizer


def load_reward_model(name: str, pad_token_id: int, setting: str = "MODEL", dtype=torch.float32):
    """A reward model from a saved RM, or a fresh scalar head on a causal LM (e.g. the SFT checkpoint)."""
    model = from_pretrained(
        AutoModelForSequenceClassification.from_pretrained,
        name,
        setting,
        num_labels=1,
        dtype=dtype,
    )
    # Llama configs have none; the last-token lookup needs it
    model.config.pad_token_id = pad_token_id
    return model


class RewardEnsemble(torch.nn.Module):
    """k frozen reward models read as one conservative reward (Coste et al. 2023, "Reward Model Ensembles Help
    Mitigate Overoptimization"). Each member's score is standardised (`calibrate`: its mean and std on the SFT
    policy's own samples), then combined per response: 'mean', 'min' (the worst case) or 'mean_minus_std'
    (mean - lam * std across members: uncertainty costs reward). Called like a sequence classifier
    (`reward_scores` works on it); `member_scores` gives the k standardised scores."""

    combines = ("mean", "min", "mean_minus_std")

    def __init__(self, members: list, combine: str, lam: float):
        super().__init__()
        if combine not in self.combines:
            raise ValueError(f"combine={combine!r}: expected one of {self.combines}")
        self.members, self.combine, self.lam = torch.nn.ModuleList(members), combine, lam
        self.register_buffer("shift", torch.zeros(len(members)))
        self.register_buffer("scale", torch.ones(len(members)))

    def get_input_embeddings(self):
        return None  # members are sequence classifiers: no LM head tied to an embedding (model/memory.py)

    def member_scores(self, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
        """(B, T) -> (B, k) standardised scores."""
        raw = torch.stack([m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
                           .logits.squeeze(-1).float() for m in self.members], -1)
        return (raw - self.shift) / self.scale

    def combined(self, scores: torch.Tensor) -> torch.Tensor:
        """(B, k) member scores -> (B,) the ensemble's reward."""
        if self.combine == "mean":
            return scores.mean(-1)
        if self.combine == "min":
            return scores.min(-1).values
        return scores.mean(-1) - self.lam * scores.std(-1)

    def forward(self, input_ids, attention_mask, position_ids=None):
        return SequenceClassifierOutput(
            logits=self.combined(self.member_scores(input_ids, attention_mask, position_ids))[:, None])

    @torch.no_grad()
    def calibrate(self, input_ids, attention_mask) -> None:
        """Each member's mean and std over these sequences become its shift and scale."""
        self.calibrate_batches([(input_ids, attention_mask)])

    @torch.no_grad()
    def calibrate_batches(self, batches) -> None:
        """calibrate over all the sequences of several (input_ids, attention_mask) batches."""
        self.shift.zero_()
        self.scale.fill_(1.0)
        raw = torch.cat([self.member_scores(ids, mask, position_ids_for(mask)) for ids, mask in batches])  # (N, k)
        self.shift.copy_(raw.mean(0))
        self.scale.copy_(raw.std(0).clamp(min=1e-6))


def reward_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Score at the last non-pad token.  input_ids, attention_mask: (B, T) -> (B,)"""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_for(attention_mask),
    )
    return out.logits.squeeze(-1).float()  # (B,)


def token_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head at every position (PPO's critic).  (B, T) -> (B, T); values[:, t] estimates
    the return after token t.

    The model's own forward runs (a sequence classifier applies its head at every position, then keeps
    the last token's score); a hook on the head keeps all positions. Going through the forward, not the
    backbone submodule, matters under several processes: a DDP / FSDP / DeepSpeed wrapper only
    synchronises gradients (and gathers sharded weights) for calls that go through the wrapper."""
    head = getattr(model, "module", model).score  # the wrapper's module, or the model itself
    outputs = []
    handle = head.register_forward_hook(lambda module, args, out: outputs.append(out))
    try:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_for(attention_mask),
        )
    finally:
        handle.remove()
    return outputs[0].squeeze(-1).float()  # (B, T)


def load_scorer(path: str, setting: str = "RM"):
    """(reward model in eval mode, its tokenizer with the chat format it was trained on) for score_replies;
    a tokenizer saved without a chat template gets the Alpaca one (the project's format before templates)."""
    tokenizer = load_tokenizer(path, setting)
    if not tokenizer.chat_template:
        use_chat_format(tokenizer, False)
    return load_reward_model(path, tokenizer.pad_token_id, setting).eval(), tokenizer


@torch.no_grad()
def score_replies(
    model,
    tokenizer,
    conversations: list[list[dict]],
    replies: list[str],
    batch_size: int = 16,
    max_len: int = None,
) -> list[float]:
    """Reward of each reply to its conversation, both rendered with the reward model's own chat template
    (its tokenizer's: the format it was trained on), read at the reply's end-of-turn token. max_len: keep
    only the last max_len tokens (the dialogue cut from the left, as the reward model's training data was)."""
    seqs = []
    for messages, reply in zip(conversations, replies):
        prompt, turn = reply_text(tokenizer, messages, reply)
        seqs.append(
            (encode_text(tokenizer, prompt) + encode_text(tokenizer, turn))[
                -max_len if max_len else 0 :
            ]
        )
    scores = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i: i + batch_size]
        input_ids = pad(chunk, tokenizer.pad_token_id).to(model.device)  # (B, T)
        attention_mask = pad([[1] * len(s) for s in chunk], 0).to(model.device)  # (B, T)
        scores += reward_scores(model, input_ids, attention_mask).tolist()
    return scores
