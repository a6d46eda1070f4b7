"""Shared fixtures: tiny models built from configs, and one short SFT run reused across tests."""
import contextlib
import io
import json
import os
import runpy
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network


def step_gradient(trainer) -> "torch.Tensor":
    """The gradient of one training step (all micro-batches), flattened, taken before the optimizer updates:
    a step over two micro-batches is compared with the same data in one batch."""
    import torch

    grads = []
    trainer.optimizer.step = lambda: grads.append(
        torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]))
    trainer.training_step()
    return grads[0]


def trainer_configs(out_dir, **settings) -> dict:
    """loop= and optim= for a trainer built in a test: the given settings over small test values."""
    from trainer.base import LoopConfig, OptimConfig

    loop = dict(out_dir=str(out_dir), max_steps=1, warmup_steps=0, grad_clip=1.0, eval_interval=0,
                log_interval=10, save_interval=0, seed=0, bf16=False, resume=False, log_with="none",
                group_by_length=False, gradient_checkpointing=False, fsdp=False, overwrite=False)
    optim = dict(lr=1e-3, weight_decay=0.0, batch_size=8, grad_accum=1)
    for key, value in settings.items():
        if key not in loop and key not in optim:
            raise TypeError(f"trainer_configs: unknown setting {key!r}")
        (loop if key in loop else optim)[key] = value
    # accelerate keeps one mixed-precision setting per process: a test after a bf16 one (on the same pytest
    # worker) starts from a clean state when its precision differs
    from accelerate.state import AcceleratorState
    wanted = "bf16" if loop["bf16"] else "no"
    if AcceleratorState._shared_state and str(AcceleratorState().mixed_precision) != wanted:
        AcceleratorState._reset_state(True)
    return {"loop": LoopConfig(**loop), "optim": OptimConfig(**optim)}


def tiny_model(seed: int = 0, dropout: float = 0.0, attention_dropout: float = None):
    """A 2-layer, width-32 OPT with the embedded tokenizer's vocabulary, its weights drawn after
    torch.manual_seed(seed). attention_dropout follows dropout unless given."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    attention_dropout = dropout if attention_dropout is None else attention_dropout
    return OPTForCausalLM(OPTConfig(vocab_size=512, hidden_size=32, word_embed_proj_dim=32, ffn_dim=64,
                                    num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=128,
                                    dropout=dropout, attention_dropout=attention_dropout,
                                    activation_dropout=0.0))


def make_sft_trainer(tok, data, out_dir, model=None, cls=None, run_config=None, **settings):
    """An SFT trainer (or `cls`) on a tiny model, with no eval data and no judge: lr 3e-3, batch 8, a
    log line every step, seed 1, unless `settings` say otherwise."""
    from trainer.sft import SFTTrainer

    args = {"lr": 3e-3, "batch_size": 8, "log_interval": 1, "seed": 1, **settings}
    return (cls or SFTTrainer)(model or tiny_model(), tok, data, None, None,
                               run_config={"test": True} if run_config is None else run_config,
                               max_new_tokens=8, eval_batch_size=64, judge=None, **trainer_configs(out_dir, **args))


@pytest.fixture(scope="module")
def tok():
    """The embedded tokenizer (a test file may define its own, e.g. with a chat format installed)."""
    from model.load import load_tokenizer

    return load_tokenizer("embedded")


@pytest.fixture(scope="module")
def alpaca_tok():
    """The embedded tokenizer with the Alpaca format installed as its chat template (CHAT_TEMPLATE=False)."""
    from dataset.chat import use_chat_format
    from model.load import load_tokenizer

    tokenizer = load_tokenizer("embedded")
    use_chat_format(tokenizer, False)
    return tokenizer


def write_jsonl(tmp_path, name: str, rows: list) -> str:
    """Write rows as tmp_path/name, one JSON object per line; returns the path."""
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(autouse=True)
def _run_in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def run_script(*args, timeout=600) -> str:
    """Run a train_*.py script in a subprocess; fail with its output if it fails."""
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"},
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def run_inline(*args) -> str:
    """Run a script (args[0]) as __main__ in this process and return what it printed; fail if it exits
    non-zero. It saves the ~6 s a subprocess spends importing torch and transformers, for tests that only
    need a run's outputs; how the command line behaves under signals and launchers is run_script's."""
    code, out, _ = _run_in_process(args)
    if code not in (None, 0):
        pytest.fail(f"{args} exited with {code}:\n{out[-3000:]}")
    return out


def run_refused(*args) -> tuple[int, str]:
    """Run a script in this process where it must stop on a UserError: (exit code, stderr). Any other
    exception (a traceback for the user) propagates and fails the test."""
    code, out, err = _run_in_process(args)
    assert code not in (None, 0), f"{args} did not fail:\n{out[-3000:]}"
    return code, err


def _run_in_process(args) -> tuple:
    """(exit code, stdout, stderr) of args[0] run as __main__. What a script changes in the process
    (argv, cwd, torch threads and grad mode, RNG) is put back, and accelerate's state is reset before
    and after."""
    import torch
    from accelerate.state import AcceleratorState
    from utils import rng_state, set_rng_state

    saved = sys.argv, os.getcwd(), torch.get_num_threads(), torch.is_grad_enabled(), rng_state()
    printed, errors, code = io.StringIO(), io.StringIO(), None
    sys.argv = list(args)
    os.chdir(ROOT)
    # accelerate keeps one mixed-precision setting per process; a script picks its own
    AcceleratorState._reset_state(True)
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
            runpy.run_path(os.path.join(ROOT, args[0]), run_name="__main__")
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv, cwd, threads, grad, rng = saved
        os.chdir(cwd)
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)
        set_rng_state(rng)
        AcceleratorState._reset_state(True)
    return code, printed.getvalue(), errors.getvalue()


@pytest.fixture(scope="session")
def sft_dir(tmp_path_factory) -> str:
    """A briefly trained SFT checkpoint of the embedded model (shared: later stages start from it). Under
    pytest-xdist the workers share one: the first to take the lock trains it, the others wait for it."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, above each worker's own
    out = root / "sft_fixture"
    with FileLock(str(root / "sft_fixture.lock")):
        if not (out / "model.safetensors").exists():
            run_inline(
                "train_sft.py",
                "--out_dir",
                str(out),
                "--max_steps",
                "100",
                "--batch_size",
                "32",
                "--lr",
                "5e-3",
                "--eval_interval",
                "0",
                "--save_interval",
                "0",
                "--eval_limit",
                "40",
                "--test_limit",
                "20",
                "--warmup_steps",
                "10",
            )
    return str(out)


@pytest.fixture(scope="session")
def opt125m_dir(tmp_path_factory) -> str:
    """A local checkpoint with facebook/opt-125m's exact architecture and random weights."""
    from model.load import build_opt125m_arch

    os.chdir(ROOT)
    return build_opt125m_arch(str(tmp_path_factory.mktemp("opt125m")))
