"""Two processes (torch.distributed.run, gloo on CPU) are one run: one process group, the same weights as
one process with the double batch, PPO statistics over the global batch, and exact resume of every rank.

The 2-process side runs tests/dist_worker.py in subprocesses (a run killed mid-way, then one launch for
SFT + RM + PPO + the resume); the 1-process reference runs the same functions here.
"""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, trainer_configs
from dist_worker import flat, rm_run, sft_run, tiny_config
from model.loss import masked_mean
from trainer import dist
from trainer.checkpoint import load_newest
from utils import UserError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(mode: str, out_dir, expect_success: bool = True) -> subprocess.CompletedProcess:
    """tests/dist_worker.py MODE OUT_DIR under `python -m torch.distributed.run --nproc_per_node 2`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    for _ in range(2):  # a second try only if another program took the free port before the launcher bound it
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                               "tests/dist_worker.py", mode, str(out_dir)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        if "address already in use" not in proc.stderr.lower() and "EADDRINUSE" not in proc.stderr:
            break
    if expect_success:
        assert proc.returncode == 0, f"{mode} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def two_procs(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_procs")
    cut = launch("cut", out, expect_success=False)
    assert cut.returncode != 0 and "exitcode  : 3" in cut.stderr, cut.stderr[-3000:]  # killed at step 4
    launch("train", out)
    return out, torch.load(out / "train.pt", weights_only=False)


@pytest.fixture
def fresh_accelerator():
    """accelerate keeps one state per process; earlier tests may have set bf16."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)


def relative_gap(a: torch.Tensor, b: torch.Tensor, start: torch.Tensor) -> float:
    """|a - b| relative to how far training moved the weights from `start`."""
    return ((a - b).norm() / (b - start).norm()).item()


def test_two_processes_form_one_group(two_procs):
    """torchrun's two processes are ranks 0 and 1 of one MULTI_CPU group, not two 1-process copies."""
    _, result = two_procs
    kind = "DistributedType.MULTI_GPU" if torch.cuda.is_available() else "DistributedType.MULTI_CPU"  # NCCL / gloo
    assert result["launch"] == [(2, 0, kind), (2, 1, kind)]


def test_each_process_destroys_its_group_before_exit(two_procs):
    """Both ranks exit with the process group destroyed (trainer/dist.py registers it at exit): one left up
    can abort the process in interpreter shutdown, a failed run after its work was done."""
    out, _ = two_procs
    assert [(out / f"exit.{rank}").read_text() for rank in (0, 1)] == ["False", "False"]


def test_sft_two_processes_equal_one_process_with_double_batch(two_procs, tmp_path, fresh_accelerator):
    """2 processes x batch 8 end 3 steps with the weights of 1 process x batch 16 (same samples): the
    loss is the mean over the global batch's supervised tokens. Per-rank token means averaged over the
    ranks put the weights about 0.17 apart (measured once); float noise gives about 2e-4."""
    out, result = two_procs
    assert result["sft_lm_head_chunk"] == 16  # DDP wraps the model: the loss still takes the head in chunks
    one = sft_run(str(tmp_path), batch_size=16)
    torch.manual_seed(0)
    start = flat(type(one.model)(tiny_config()))
    assert relative_gap(result["sft"], flat(one.model), start) < 2e-3
    two_log = [json.loads(line) for line in open(out / "sft" / "metrics.jsonl")]
    one_log = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [line["step"] for line in two_log] == [1, 2, 3]  # one writer: the main process
    # step 1's loss is computed before any update: the all-reduced global token mean equals one process's
    assert two_log[0]["train/loss"] == pytest.approx(one_log[0]["train/loss"], rel=1e-5)


def test_rm_two_processes_equal_one_process_with_double_batch(two_procs, tmp_path, fresh_accelerator):
    """The reward model likewise: ranked groups of 2-4 responses give the ranks different pair counts,
    and the loss is the mean over the global batch's pairs."""
    _, result = two_procs
    one = rm_run(str(tmp_path), batch_size=8)
    torch.manual_seed(0)
    start = flat(type(one.model)(tiny_config(num_labels=1)))
    assert relative_gap(result["rm"], flat(one.model), start) < 2e-3


def test_ppo_two_processes(two_procs):
    """PPO on 2 ranks, with dropout 0.1, temperature 0.7 and the LM head in chunks (tests/dist_worker.py
    ppo_checks): KL 0 and
    ratio 1 before any update on each rank; identical weights on both ranks
    after an update; score moments, advantage whitening, the adaptive beta and the logged metrics over
    the global batch; evaluation answers every held-out prompt once, in order, on both ranks; an actor
    step that overflows stops both ranks at once, naming the weights."""
    _, result = two_procs
    r0, r1 = result["ppo"]
    for r in (r0, r1):
        assert r["lm_head_chunk"] == 5  # DDP wraps the actor: its head is found on the inner model
        assert r["kl_zero"] and r["first"]["ratio"] == 1.0 and r["first"]["clipfrac"] == 0.0
        assert r["first"]["approx_kl"] == 0.0
    assert r0["raw_scores"] != r1["raw_scores"]  # each rank rolled out its own prompts
    assert torch.equal(r0["after_update"], r1["after_update"])
    scores = torch.tensor(r0["raw_scores"] + r1["raw_scores"])
    for r in (r0, r1):  # the running moments saw all 16 scores
        count, mean, var = r["moments"]
        assert count == 16 and mean == pytest.approx(scores.mean().item()) and var == pytest.approx(scores.var(unbiased=False).item())
    adv, mask = torch.cat([r0["advantages"], r1["advantages"]]), torch.cat([r0["action_mask"], r1["action_mask"]]).float()
    assert abs(masked_mean(adv, mask).item()) < 1e-5
    assert masked_mean(adv ** 2, mask).item() == pytest.approx(1.0, abs=1e-3)  # whitened over both ranks
    assert abs(masked_mean(r0["advantages"], r0["action_mask"].float()).item()) > 1e-3  # not per rank
    assert r0["beta"] == r1["beta"] != 0.1  # one adaptive beta, moved by the global KL
    assert r0["metrics"] == r1["metrics"]
    assert r0["eval"] == r1["eval"] and [row["input"] for row in r0["eval"]] == r0["eval_inputs"]
    for r in (r0, r1):  # an overflowing actor step stops both ranks, the weights named as the cause
        assert r["overflow"] and "updated weights is non-finite" in r["overflow"]


def test_kill_and_resume_two_processes_equals_uninterrupted(two_procs):
    """A 2-process run with dropout, killed at step 4 (checkpoint at step 3) and resumed, ends with the
    weights of the uninterrupted 2-process run: every rank's RNG state is saved and restored."""
    out, result = two_procs
    assert len(load_newest(str(out / "run" / "checkpoint"))[1]["rng"]) == 2  # one RNG state per rank
    assert result["resumed_step"] == 6 and torch.equal(result["full"], result["resumed"])


def fake_accelerator(num_processes: int, distributed_type):
    """A stand-in for accelerate's Accelerator class: rank 0 of `num_processes`, under `distributed_type`."""

    class Fake:
        process_index = 0

        def __init__(self, **kwargs):
            pass

    Fake.num_processes, Fake.distributed_type = num_processes, distributed_type
    return Fake


def test_launch_without_a_process_group_refuses(monkeypatch):
    """WORLD_SIZE=2 from the launcher but a 1-process accelerator (what accelerate 1.15 does on CPU
    without cpu=True): stop with a clear error instead of running two copies of the job."""
    from accelerate.utils import DistributedType

    monkeypatch.setattr(dist, "Accelerator", fake_accelerator(1, DistributedType.NO))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(dist.LaunchError, match="WORLD_SIZE=2.*refusing"):
        dist.make_accelerator()


def test_sharded_engine_requests_that_cannot_run_are_refused(monkeypatch):
    """An FSDP accelerate config on a CPU machine (accelerate falls back to plain DDP), PPO under DeepSpeed
    (one engine per Accelerator, two trained models) and a resumable checkpoint under a sharded engine
    each stop with an error that names the setting, instead of running something other than asked."""
    from accelerate.utils import DistributedType

    from trainer.dist import check_sharded_settings

    TwoProcesses = fake_accelerator(2, DistributedType.MULTI_CPU)
    monkeypatch.setattr(dist, "Accelerator", TwoProcesses)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(dist.LaunchError, match="asks for FSDP.*got DistributedType.MULTI_CPU"):
        dist.make_accelerator()
    deepspeed, fsdp = TwoProcesses(), TwoProcesses()
    deepspeed.distributed_type, fsdp.distributed_type = DistributedType.DEEPSPEED, DistributedType.FSDP
    with pytest.raises(dist.LaunchError, match="PPO under DeepSpeed"):
        dist.check_two_models(deepspeed)
    with pytest.raises(UserError, match="SAVE_INTERVAL / RESUME under FSDP"):
        check_sharded_settings(fsdp, save_interval=100, resume=False, grad_accum=1)
    with pytest.raises(UserError, match="GRAD_ACCUM > 1 under DeepSpeed"):
        check_sharded_settings(deepspeed, save_interval=0, resume=False, grad_accum=2)
    check_sharded_settings(fsdp, save_interval=0, resume=False, grad_accum=2)  # allowed


def test_get_batch_splits_the_global_batch_across_ranks(tmp_path, fresh_accelerator):
    """Rank r of W takes the r-th block of each step's W x B samples: the two ranks' batches together are
    the 1-process batch of 2B at every step, in order, across epoch boundaries too, and the first epoch
    visits every item once."""
    from types import SimpleNamespace

    from trainer.base import Trainer

    trainer = Trainer(None, list(range(10)), lambda items: {"items": items}, run_config={},
                      **trainer_configs(tmp_path, lr=0.1, max_steps=1, batch_size=6, seed=5))
    one = [trainer.get_batch(step)["items"] for step in range(4)]  # 1 process, batch 6
    assert sorted(one[0] + one[1][:4]) == list(range(10))
    trainer.batch_size = 3
    for step in range(4):
        two = []
        for rank in range(2):
            trainer.accelerator = SimpleNamespace(num_processes=2, process_index=rank)
            two += trainer.get_batch(step)["items"]
        assert two == one[step]
