"""bench/pipeline_hh.sh: what its PPO stage is given. A stand-in `python` on PATH records each command line
instead of running it, so the test reads the settings the script passes in a fraction of a second."""
import os
import shlex
import subprocess

from conftest import ROOT


def commands(tmp_path, **env) -> list:
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
    return [shlex.split(line) for line in log.read_text().splitlines()]


def flags(commands: list, script: str) -> list:
    """The --flag value pairs of each command that runs `script` (bench/timed.py DIR -- python SCRIPT ...)."""
    return [{flag: value for flag, value in zip(c, c[1:]) if flag.startswith("--")}
            for c in commands if script in c]


def test_hh_pipeline_reports_on_hh_pays_for_a_cut_reply_and_never_evaluates_on_its_test_prompts(tmp_path):
    run = commands(tmp_path)
    rms = flags(run, "train_rm.py")
    assert len(rms) == 2  # the proxy and the judge
    for rm in rms:  # both are reported on the held-out HH pairs, not on the embedded task's default files
        assert rm["--test_data"].endswith("rm_test.jsonl") and rm["--eval_data"] == "none"
    [args] = flags(run, "train_rlhf.py")
    # the reward models read a cut reply closed with EOS; without the penalty PPO could run every reply to
    # the limit and be scored as if it had finished
    assert args["--close_truncated"] == "True"
    assert float(args["--missing_eos_penalty"]) > 0
    # nothing in the HH run is chosen, so there are no validation evaluations, and above all none on the
    # test dialogues (the reported win rate)
    assert args["--eval_prompts"] == "none"
    assert args["--test_prompts"].endswith("hh-harmless-test.jsonl")
