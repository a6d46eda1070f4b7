"""The share of the bf16 matmul probe each side of a side-by-side run turns into model FLOPs.

    python bench/vs_trl_flops.py /tmp/vs-trl/side.jsonl      (bench/vs_trl.sh runs it)

Model FLOPs count the matrix products only, on opt-125m's shape: N = 84.9M weights in the blocks' linear
layers and 38.6M in the LM head. A training token costs 6 N (forward 2 N, backward 4 N), counted on the padded
tokens each side computed:
- SFT: 6 (N_blocks + N_head) per padded token (the usual definition: the full LM head, whether or not a side
  skips the prompt's logits);
- reward model: 6 N_blocks per padded token (no LM head);
- PPO, per iteration, 8 prompts of P = 64 tokens and R = 32 new ones: generation 2 (N_blocks + N_head) per
  prompt and new token, four scoring forwards (actor, reference, critic, reward model: 2 N_blocks per token
  and the actor's and reference's head on the R new tokens), and 4 epochs of actor and critic forward +
  backward (6 N_blocks per token, 6 N_head per new token). An estimate: both sides get the same count.
The probe is the mean of the run's before and after bf16 readings (2 threads, 2048 x 2048).
"""
import json
import sys

N_BLOCKS, N_HEAD = 84_934_656, 38_608_896
PROMPTS, PROMPT_LEN, NEW = 8, 64, 32


def ppo_flops() -> float:
    tokens = PROMPTS * (PROMPT_LEN + NEW)
    generate = 2 * (N_BLOCKS + N_HEAD) * PROMPTS * (PROMPT_LEN + NEW)
    score = 4 * 2 * N_BLOCKS * tokens + 2 * 2 * N_HEAD * PROMPTS * NEW
    learn = 4 * (2 * 6 * N_BLOCKS * tokens + 6 * N_HEAD * PROMPTS * NEW)
    return generate + score + learn


def main(path: str) -> None:
    runs = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            runs[row["job"]] = row
    probes = [runs[p]["matmul2048_bfloat16_2thr_gflops"]["median"] for p in ("probe_before", "probe_after")
              if p in runs]
    if not probes:
        sys.exit(f"{path}: no probe readings")
    probe = sum(probes) / len(probes)
    print(f"bf16 probe {' -> '.join(f'{p:.0f}' for p in probes)} GFLOP/s (mean {probe:.0f})")
    print("| stage | side | model GFLOP/s | share of the bf16 probe |\n| --- | --- | ---: | ---: |")
    for stage, side in [(s, p) for s in ("sft", "rm", "ppo") for p in ("project", "trl")]:
        row = runs.get(f"{side}_{stage}")
        if row is None:
            continue
        if stage == "ppo":
            seconds = row.get("s_per_iter_steady") or row.get("steady_step_s_mean")
            gflops = ppo_flops() / seconds / 1e9
        else:
            padded = row.get("padded_tokens_per_s")
            if padded is None and stage == "rm":  # the project's RM line has pairs/s; its summary has tokens
                padded = json.load(open("out/side_rm/summary.json"))["padded_tokens_per_second"]
            gflops = 6 * (N_BLOCKS + (N_HEAD if stage == "sft" else 0)) * padded / 1e9
        print(f"| {stage} | {side} | {gflops:.0f} | {gflops / probe:.0%} |")


if __name__ == "__main__":
    main(sys.argv[1])
