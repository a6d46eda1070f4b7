"""Shared plumbing, nothing algorithmic: the project's errors (errors.py), command-line settings
(settings.py), the process's seeding, RNG state and memory (runtime.py), and output files (files.py).
Everything public is importable from `utils` itself."""
from utils.errors import ConfigError, UserError, run_main
from utils.files import append_jsonl, plot_metrics, write_json
from utils.runtime import (
    bound_kernel_caches,
    hub_reachable,
    keep_freed_memory,
    own_random_numbers,
    peak_rss_mb,
    quiet_transformers,
    rng_state,
    seed_everything,
    set_rng_state,
)
from utils.settings import check_ranges, configure, from_settings, read_settings_file, settings_help

__all__ = [
    "ConfigError",
    "UserError",
    "append_jsonl",
    "bound_kernel_caches",
    "check_ranges",
    "configure",
    "from_settings",
    "hub_reachable",
    "keep_freed_memory",
    "own_random_numbers",
    "peak_rss_mb",
    "plot_metrics",
    "quiet_transformers",
    "read_settings_file",
    "rng_state",
    "run_main",
    "seed_everything",
    "set_rng_state",
    "settings_help",
    "write_json",
]
