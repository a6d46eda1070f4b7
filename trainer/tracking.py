"""Experiment trackers through accelerate (TensorBoard, Weights & Biases, ...), beside metrics.jsonl.

LOG_WITH in every train_*.py: 'none' (default: metrics.jsonl only), or accelerate tracker names,
comma-separated ('tensorboard', 'wandb', 'tensorboard,wandb'). The trackers get every line metrics.jsonl
gets, with the same keys, at the same step, plus the run config as hyperparameters; PPO also logs
sample completions at each evaluation as a text table. TensorBoard writes under out_dir/logs/:

    tensorboard --logdir out
"""
import os
import time

from accelerate import Accelerator
from tqdm.auto import tqdm

from utils import ConfigError, append_jsonl


def start_trackers(accelerator: Accelerator, log_with: str, out_dir: str, run_config: dict) -> None:
    """Start the trackers named in LOG_WITH on `accelerator` (main process only); 'none' starts nothing."""
    if log_with == "none":
        return
    from accelerate.tracking import filter_trackers

    names = [n.strip() for n in log_with.split(",")]
    accelerator.project_configuration.set_directories(os.path.join(out_dir, "logs"))
    try:
        trackers = filter_trackers(names, accelerator.logging_dir)
    except ValueError as e:  # an unknown name
        raise ConfigError(f"LOG_WITH={log_with!r}: {e}") from None
    if len(trackers) < len(names):
        raise ConfigError(f"LOG_WITH={log_with!r}: a tracker's package is not installed "
                         "(pip install tensorboard, or pip install wandb)")
    accelerator.log_with = trackers
    config = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in run_config.items()}
    name = os.path.basename(os.path.normpath(out_dir))
    accelerator.init_trackers("instruct-model", config, init_kwargs={"wandb": {"name": name}})


def end_trackers(accelerator: Accelerator) -> None:
    """Close the trackers' files and runs. (Not accelerate's end_training: it also ends the process group.)"""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []


def markdown_table(rows: list[dict]) -> str:
    """Rows of the same keys as a markdown table (TensorBoard's text tab renders it)."""
    cols = list(rows[0])
    cell = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v).replace("|", "\\|").replace("\n", "\\n")
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows])


class MetricsLog:
    """Mixed into Trainer: metrics.jsonl, the trackers and the console, main process only (uses its
    accelerator, out_dir, step, resuming and token counters)."""

    def token_counts(self, seconds: float) -> dict:
        """summary.json's throughput: tokens the training steps processed (non-pad, and padded) per
        second."""
        return {"train_tokens": self.train_tokens, "train_tokens_padded": self.train_tokens_padded,
                "tokens_per_second": self.train_tokens / max(seconds, 1e-9),
                "padded_tokens_per_second": self.train_tokens_padded / max(seconds, 1e-9)}

    def log_start(self, metrics: dict) -> None:
        """Step 0 of metrics.jsonl (and of the curves): the model before training. A resumed run has
        it."""
        if not self.resuming:
            self.write_metrics(metrics)

    def write_metrics(self, metrics: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        append_jsonl(os.path.join(self.out_dir, "metrics.jsonl"), {"step": self.step, "time": time.time(), **metrics})
        if self.accelerator.trackers:  # the same keys and values, x = step
            numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            self.accelerator.log(numbers, step=self.step)
        if any(k.startswith("eval/") for k in metrics):
            self.log(f"step {self.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                                                      if k.startswith("eval/")))

    def log(self, text: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(text)

    def log_text(self, key: str, text: str) -> None:
        """Text (e.g. a markdown table of sample completions) to the experiment trackers, at this
        step."""
        if self.accelerator.trackers:
            self.accelerator.log({key: text}, step=self.step)
