"""Sharded training (FSDP2 over gloo, trainer/fsdp.py) is the same run as one process: SFT, the
reward model and PPO on 2 ranks x batch b end with the weights of 1 process x 2b; each rank
holds half of the weights, gradients and AdamW state; a resumed sharded run is bitwise the
uninterrupted one; a 2-node launch (c10d rendezvous) equals one process.

The 2-rank side runs tests/fsdp_worker.py under torch.distributed.run (one launch for all checks,
one for the 2-node case); the 1-process references run the same functions here, unsharded."""
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
from transformers import OPTForCausalLM, OPTForSequenceClassification

from conftest import ROOT
from dist_worker import flat, rm_run, sft_run, tiny_config
from fsdp_worker import full_flat, ppo_greedy
from trainer import fsdp
from trainer.checkpoint import CheckpointError
from utils import UserError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, f"{what} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


@pytest.fixture(autouse=True)
def fresh_accelerator():
    """accelerate keeps one state per process; earlier tests may have set bf16."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """tests/fsdp_worker.py train on 2 processes (one node); its results."""
    out = tmp_path_factory.mktemp("fsdp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "tests/fsdp_worker.py", "train", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    check(proc, "fsdp_worker train")
    return out, torch.load(out / "fsdp.pt", weights_only=False), proc.stdout


@pytest.fixture(scope="module")
def one_sft(tmp_path_factory):
    """The 1-process reference: SFT at batch 16 (twice the per-rank batch), unsharded."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)
    return flat(sft_run(str(tmp_path_factory.mktemp("one_sft")), batch_size=16).model)


def start_of(*models) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.cat([flat(m(tiny_config(**kw))) for m, kw in models])


def relative_gap(a: torch.Tensor, b: torch.Tensor, start: torch.Tensor) -> float:
    """|a - b| relative to how far training moved the weights from `start`."""
    return ((a - b).norm() / (b - start).norm()).item()


def test_sharded_sft_and_rm_equal_one_process_with_double_batch(sharded, one_sft, tmp_path):
    """2 ranks x batch b under FSDP end 3 steps where 1 unsharded process at 2b ends (the loss is
    the global batch's token or pair mean; the reduce-scatter averages as DDP's all-reduce
    does). The launch says how many parameters each rank holds."""
    _, result, stdout = sharded
    assert result["world"] == 2
    assert ("OPTForCausalLM parameters sharded over 2 ranks (2 layers + root); "
            "each rank holds 18,848, 18,848 of 37,696") in stdout
    assert relative_gap(result["sft"], one_sft, start_of((OPTForCausalLM, {}))) < 2e-3
    one_rm = flat(rm_run(str(tmp_path), batch_size=8).model)
    start = start_of((OPTForSequenceClassification, {"num_labels": 1}))
    assert relative_gap(result["rm"], one_rm, start) < 2e-3


def test_sharded_ppo_equals_one_process_with_double_batch(sharded, tmp_path):
    """PPO (actor and critic sharded, each with its own AdamW) on 2 ranks x 8 prompts ends 3
    iterations with the actor and critic of 1 process x 16 prompts. Greedy rollouts and dropout 0
    make the responses the same however prompts are split, and one minibatch per rollout makes the
    updates the same sums."""
    _, result, _ = sharded
    one = ppo_greedy(str(tmp_path), 16, use_fsdp=False)
    start = start_of((OPTForCausalLM, {}), (OPTForSequenceClassification, {"num_labels": 1}))
    assert relative_gap(result["ppo"], full_flat(one.actor, one.critic), start) < 2e-3


def test_each_rank_holds_half_of_weights_gradients_and_optimizer_state(sharded):
    """Measured bytes on each rank: half of the model's float32 parameters, half of their gradients
    and half of AdamW's two moments (plus its per-parameter step counters, 4 bytes each, kept
    whole)."""
    _, result, _ = sharded
    numel = sum(p.numel() for p in OPTForCausalLM(tiny_config()).parameters())
    full = {"params": 4 * numel, "grads": 4 * numel, "optimizer": 2 * 4 * numel}
    ranks = result["memory"]
    for kind, total in full.items():
        for held in ranks:
            assert 0.45 < held[kind] / total < 0.55, (kind, held, total)
    assert sum(r["params"] for r in ranks) == full["params"]
    assert sum(r["grads"] for r in ranks) == full["grads"]


def test_final_checkpoint_is_gathered_and_loads_in_plain_transformers(sharded):
    """The HF checkpoint of a sharded run holds the full weights (gathered once) and loads with
    from_pretrained alone, equal to the trained weights."""
    out, result, _ = sharded
    model = OPTForCausalLM.from_pretrained(out / "sft_hf")
    assert torch.equal(flat(model), result["sft"])


def test_sharded_ppo_first_ratio_one_kl_zero_weights_gathered_once_per_rollout(sharded):
    """bf16 autocast, dropout 0.1, temperature 0.7, on each rank: before any update the KL to the
    copied (replicated) reference is 0 and the ratio exactly 1. Sampling 8 tokens and scoring them
    took one all-gather per FSDP unit: the weights are gathered once per rollout, not once per
    token."""
    _, result, _ = sharded
    for rank in result["ppo_first"]:
        assert rank["kl_zero"] and rank["first"]["ratio"] == 1.0
        assert rank["first"]["clipfrac"] == 0.0 and rank["first"]["approx_kl"] == 0.0
        assert rank["new_tokens"] == 8 and rank["gathers"] == rank["units"] == 3


def test_sharded_resume_is_bitwise_equal_to_the_uninterrupted_run(sharded):
    """A 2-rank sharded run with dropout, stopped after its step-3 checkpoint (each rank wrote its
    own shard file) and resumed, ends at step 6 with exactly the weights of the uninterrupted
    run."""
    out, result, _ = sharded
    assert sorted(os.listdir(out / "run" / "checkpoint" / "shards")) == [
        "shard-00001-model-00001-of-00001.safetensors",
        "shard-00002-model-00001-of-00001.safetensors"]
    assert result["resumed_step"] == 6 and torch.equal(result["full"], result["resumed"])


def test_dpo_and_grpo_run_sharded(sharded):
    """DPO and GRPO train under FSDP on 2 ranks: DPO's first loss is log 2 (policy = reference) and
    its weights move; GRPO's actor is sharded and its loss finite."""
    _, result, _ = sharded
    assert result["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6) and result["dpo_moved"] > 0
    assert result["grpo_sharded"] and math.isfinite(result["grpo_loss"])


def test_two_node_launch_equals_one_process(one_sft, tmp_path):
    """Two torchrun agents (--nnodes 2, one process each) meet through a c10d rendezvous on
    127.0.0.1 and train as one 2-rank sharded job: the weights equal one process at the double
    batch. The rendezvous store is hosted here, not by either agent (`is_host=false`): an agent that
    hosts it closes it when it exits, and the other agent's shutdown then fails if it comes later."""
    for attempt in range(2):  # a rendezvous that hangs (seen on a loaded machine) gets one fresh try on a new port
        port = free_port()
        store = torch.distributed.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_conf", "is_host=false",
               "--rdzv_id", f"fsdp{port}", "tests/fsdp_worker.py", "sft", str(tmp_path)]
        nodes = [subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        try:
            done = [node.communicate(timeout=120) for node in nodes]  # ~10 s when it meets
        except subprocess.TimeoutExpired:
            for node in nodes:
                node.kill()
                node.communicate()
            assert attempt == 0, "the 2-node rendezvous hung twice"
            continue
        for node, (stdout, stderr) in zip(nodes, done):
            check(subprocess.CompletedProcess(node.args, node.returncode, stdout, stderr), "2-node")
        break
    del store
    result = torch.load(tmp_path / "fsdp.pt", weights_only=False)
    assert result["world"] == 2
    assert relative_gap(result["sft"], one_sft, start_of((OPTForCausalLM, {}))) < 2e-3


def test_sharding_refusals_are_one_line_errors():
    """FSDP in one process, frozen parameters (PEFT, TRAIN_LAYERS) under FSDP, a sharded checkpoint
    resumed by another number of processes or unsharded, and an unsharded checkpoint resumed
    sharded each stop with a one-line error that says what to run."""
    with pytest.raises(UserError, match="single process.*torchrun --nproc_per_node N"):
        fsdp.shard_model(OPTForCausalLM(tiny_config()))
    lora_like = OPTForCausalLM(tiny_config())
    lora_like.model.decoder.embed_tokens.weight.requires_grad_(False)
    with pytest.raises(UserError, match="frozen parameters.*--fsdp False"):
        fsdp.shard_model(lora_like)
    sharded_state = {"shards": {"world": 2}}
    with pytest.raises(CheckpointError, match="shards of 2 .*--nproc_per_node 2.*not 1 process"):
        fsdp.check_resumable("ck", sharded_state, fsdp=True)
    with pytest.raises(CheckpointError, match="without FSDP"):
        fsdp.check_resumable("ck", sharded_state, fsdp=False)
    with pytest.raises(CheckpointError, match="written without FSDP; resume it with --fsdp False"):
        fsdp.check_resumable("ck", {}, fsdp=True)
