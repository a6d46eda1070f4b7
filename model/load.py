"""Load a causal LM and its tokenizer by hub id, local directory or GGUF file, or build the embedded default.

MODEL settings accepted by every script:
  "embedded"            the tiny OPT of this repo (config model/tiny_opt.json, tokenizer trained on ds/),
                        built deterministically on first use and cached in out/embedded/
  "facebook/opt-125m"   any hub id (needs the network once, then the HF cache)
  "out/sft"             a local directory written by save_pretrained
  "dir/model.gguf"      a GGUF file (e.g. SmolLM2-135M-Instruct.Q4_1.gguf; needs `gguf`)
"""
import fcntl
import hashlib
import json
import os
import shutil

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerFast,
)

from dataset.chat import EMBEDDED_TEMPLATE, corpus_texts, use_chat_format
from model.peft import load_adapter
from utils import UserError, hub_reachable

EMBEDDED = "embedded"
EMBEDDED_DIR = os.path.join("out", "embedded")
TINY_CONFIG = os.path.join(os.path.dirname(__file__), "tiny_opt.json")
# the data the embedded tokenizer is trained on: the shipped files, by name, so that a file a
# user adds to ds/ changes neither the tokenizer nor the build
# The vocabulary is fitted to the shipped training files only, never to validation or test prompts
SHIPPED_DATA = ("peft_train.jsonl", "prompts_train.jsonl", "rm_train_pairs.jsonl",
                "rm_train_ranked.jsonl", "sft_train.jsonl")
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0-3, as in OPT's tokenizer


class ModelError(UserError, ValueError):
    """A model setting that cannot be loaded; the message says which setting to change."""
    exit_code = 4


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`, with OPT's special-token ids and OPT's habit of
    prepending </s> as BOS. Digits are split one by one so arithmetic sees each digit."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A $B", special_tokens=[("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def build_embedded(data_dir: str = "ds", out_dir: str = EMBEDDED_DIR, seed: int = 0) -> str:
    """Build (once) the untrained embedded OPT and its tokenizer; rebuilt when config or data change."""
    with open(TINY_CONFIG) as f:
        config = json.load(f)
    files = [os.path.join(data_dir, name) for name in SHIPPED_DATA]  # never a user's file in ds/
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise ModelError(f"MODEL='embedded': needs the shipped data {', '.join(missing)} (restore "
                         "it with git checkout, or run `python -m dataset.task_data` to write it)")
    digest = hashlib.sha256(json.dumps([config, seed, EMBEDDED_TEMPLATE]).encode())
    for path in files:
        with open(path, "rb") as f:
            digest.update(f.read())
    stamp = os.path.join(out_dir, "build_id.txt")
    if built(stamp, digest.hexdigest()):
        return out_dir
    # every process of a fresh `torchrun` gets here at once: one builds, the others wait for it
    # and then find the finished build
    os.makedirs(os.path.dirname(out_dir) or ".", exist_ok=True)
    with open(out_dir + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built(stamp, digest.hexdigest()):
            write_embedded(files, config, seed, digest.hexdigest(), out_dir)
    return out_dir


def built(stamp: str, build_id: str) -> bool:
    try:
        with open(stamp) as f:
            return f.read() == build_id
    except OSError:
        return False


def write_embedded(files: list[str], config: dict, seed: int, build_id: str, out_dir: str) -> None:
    """Build the embedded model and tokenizer in a temporary directory and swap it in by rename."""
    tokenizer = build_tokenizer(corpus_texts(files), config["vocab_size"])
    # its own small chat format (CHAT_TEMPLATE=True uses it)
    tokenizer.chat_template = EMBEDDED_TEMPLATE
    torch.manual_seed(seed)
    model = OPTForCausalLM(OPTConfig(**config))
    tmp = f"{out_dir}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, "build_id.txt"), "w") as f:
        f.write(build_id)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def resolve(name: str, setting: str = "MODEL") -> tuple[str, dict]:
    """Turn a model setting into (path or hub id, extra from_pretrained kwargs), or raise ModelError."""
    if name == EMBEDDED:
        return build_embedded(), {}
    if name.endswith(".gguf"):
        if not os.path.isfile(name):
            raise ModelError(f"{setting}={name!r}: no such GGUF file (check the path)")
        return os.path.dirname(name) or ".", {"gguf_file": os.path.basename(name)}
    if os.path.isdir(name):
        if not os.path.exists(os.path.join(name, "config.json")):
            raise ModelError(
                f"{setting}={name!r}: the directory has no config.json, so it is not a saved model "
                "(give a directory written by save_pretrained, e.g. out/sft)"
            )
        return name, {}
    looks_local = (name.startswith((".", "/", "~")) or name.count("/") != 1
                   # 'out/sft' with no out/sft/ is a mistyped path
                   or os.path.isdir(name.split("/")[0]))
    if looks_local:
        raise ModelError(
            f"{setting}={name!r}: no such directory, and not a hub id of the form 'org/name' "
            "(check the path, give a hub id such as 'facebook/opt-125m', or 'embedded' for the built-in model)"
        )
    from huggingface_hub import try_to_load_from_cache
    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    if not cached and (os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable()):
        raise ModelError(
            f"{setting}={name!r} is not in the local Hugging Face cache and the hub cannot be "
            f"reached (go online once, or set {setting}='embedded', the built-in tiny OPT, or a local directory)"
        )
    return name, ({"local_files_only": True} if cached else {})


def from_pretrained(load, name: str, setting: str, **kw):
    """load(path, **kw) for a model setting; a checkpoint that fails to load is a ModelError naming the setting.
    A GGUF model arrives dequantized to float but still flagged as quantized, which would make
    save_pretrained refuse it at the end of the stage: the flag is cleared here, for every loader."""
    path, extra = resolve(name, setting)
    try:
        model = load(path, **extra, **kw)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        return model
    except (OSError, ValueError, KeyError, SafetensorError) as e:  # SafetensorError: a cut file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelError(
            f"{setting}={name!r}: cannot be loaded ({type(e).__name__}: {first}) "
            "(check that it is a complete save_pretrained directory, hub id or GGUF file)"
        ) from e


def load_tokenizer(name: str, setting: str = "MODEL"):
    """The tokenizer of a model setting, with the one pad rule every stage uses (see set_pad_token)."""
    return set_pad_token(
        from_pretrained(AutoTokenizer.from_pretrained, name, setting), f"{setting}={name!r}"
    )


def set_pad_token(tok, where: str = "the tokenizer"):
    """Make the pad id differ from EOS. Many tokenizers (SmolLM2, GPT-2 style) pad with EOS or have no
    pad; then every EOS looks like padding: the reward model's last-non-pad-token score lands one token
    before the EOS it was trained on, and masks built from the pad id drop the EOS. The unknown token
    (never produced by byte-level BPE) takes the pad's place."""
    if tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id:
        return tok
    if tok.unk_token_id is None or tok.unk_token_id == tok.eos_token_id:
        raise ModelError(
            f"{where}: the tokenizer pads with EOS (or has no pad token) and has no separate unknown "
            "token to pad with; add a pad token to the tokenizer (and resize the model's embeddings)"
        )
    tok.pad_token = tok.unk_token
    return tok


def load_causal_lm(name: str, setting: str = "MODEL", dtype=torch.float32):
    return from_pretrained(AutoModelForCausalLM.from_pretrained, name, setting, dtype=dtype)


def load_checkpoint(path: str, setting: str = "MODEL"):
    """(model in eval mode, tokenizer) of any checkpoint the project writes: a full or merged model dir,
    an adapter dir (peft's adapter_config.json or BitFit's bitfit_config.json, on the base model it
    names), or a stage's out_dir holding only adapter/ (prompt tuning, p-tuning, prefix tuning).
    A tokenizer without a chat template gets the Alpaca one: the project's format before templates."""
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")) \
            and os.path.isdir(os.path.join(path, "adapter")):
        return load_checkpoint(os.path.join(path, "adapter"), setting)
    adapter = next(
        (
            f
            for f in ("adapter_config.json", "bitfit_config.json")
            if os.path.exists(os.path.join(path, f))
        ),
        None,
    )
    if adapter is None:
        model, tok_dir = load_causal_lm(path, setting), path
    else:
        # BitFit records no base: the merged model sits one level up
        if adapter == "bitfit_config.json":
            base = os.path.dirname(os.path.abspath(path))
        else:
            with open(os.path.join(path, adapter)) as f:
                base = json.load(f)["base_model_name_or_path"]
        model = load_adapter(load_causal_lm(base, setting), path)
        tok_dir = next((d for d in (path, os.path.dirname(os.path.abspath(path)), base)
                        if os.path.exists(os.path.join(d, "tokenizer_config.json"))), base)
    tokenizer = load_tokenizer(tok_dir, setting)
    if not tokenizer.chat_template:
        use_chat_format(tokenizer, False)
    return model.eval(), tokenizer


DROPOUT_FIELDS = ("dropout", "attention_dropout", "activation_dropout", "hidden_dropout", "classifier_dropout")


def set_dropout(model, p: float) -> None:
    """Every dropout of a loaded model to probability p: nn.Dropout modules and the float rates that
    transformers' layers read at each call (OPT's attention and decoder layers, Llama's attention), and
    the config, so a saved checkpoint says what it was trained with."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        for field in DROPOUT_FIELDS:
            if isinstance(getattr(module, field, None), float):
                setattr(module, field, p)
    for field in DROPOUT_FIELDS:
        if isinstance(getattr(model.config, field, None), float):
            setattr(model.config, field, p)


def opt125m_config(vocab_size: int = 50272) -> OPTConfig:
    """The exact facebook/opt-125m architecture (125,239,296 parameters with its vocabulary)."""
    return OPTConfig(vocab_size=vocab_size, hidden_size=768, num_hidden_layers=12, ffn_dim=3072,
                     num_attention_heads=12, max_position_embeddings=2048, word_embed_proj_dim=768,
                     dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def build_opt125m_arch(out_dir: str, seed: int = 0) -> str:
    """A local checkpoint with opt-125m's architecture and random weights, using the embedded
    tokenizer (its ids fit OPT's vocabulary): what tests and benchmarks use offline."""
    if not os.path.exists(os.path.join(out_dir, "config.json")):
        torch.manual_seed(seed)
        OPTForCausalLM(opt125m_config()).save_pretrained(out_dir)
        AutoTokenizer.from_pretrained(build_embedded()).save_pretrained(out_dir)
    return out_dir
