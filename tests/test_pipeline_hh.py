"""bench/pipeline_hh.sh: what its PPO stage is given. A stand-in `python` on PATH records each command line
instead of running it, so the test reads the settings the script passes in a fraction of a second."""
import os
import shlex
import subprocess

from conftest import ROOT


def ppo_command(tmp_path, **env) -> dict:
    bin_dir, data = tmp_path / "bin", tmp_path / "hh"
    bin_dir.mkdir()
    data.mkdir()
    log = tmp_path / "commands.txt"
    fake = bin_dir / "python"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%q " "$@" >> {log}\necho >> {log}\n')
    fake.chmod(0o755)
    for name in ("hh-harmless-train.jsonl", "hh-harmless-test.jsonl"):
        (data / name).write_text('{"chosen": "x", "rejected": "y"}\n' * 4)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    run_env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", GGUF=str(gguf), HH_DATA=str(data),
                   OUT=str(tmp_path / "out"), PLOT=str(tmp_path / "hh.png"), **env)
    subprocess.run(["bash", "bench/pipeline_hh.sh"], cwd=ROOT, env=run_env, check=True, capture_output=True)
    commands = [shlex.split(line) for line in log.read_text().splitlines()]
    ppo = [c for c in commands if "train_rlhf.py" in c]  # bench/timed.py DIR -- python train_rlhf.py ...
    assert len(ppo) == 1, commands
    return {flag: value for flag, value in zip(ppo[0], ppo[0][1:]) if flag.startswith("--")}


def test_hh_ppo_pays_for_a_cut_reply_and_never_evaluates_on_its_test_prompts(tmp_path):
    args = ppo_command(tmp_path, STAGES="ppo")
    # the reward models read a cut reply closed with EOS; without the penalty PPO could run every reply to
    # the limit and be scored as if it had finished
    assert args["--close_truncated"] == "True"
    assert float(args["--missing_eos_penalty"]) > 0
    # nothing in the HH run is chosen, so there are no validation evaluations, and above all none on the
    # test dialogues (the reported win rate)
    assert args["--eval_prompts"] == "none"
    assert args["--test_prompts"].endswith("hh-harmless-test.jsonl")
