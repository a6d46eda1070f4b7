"""The process: seeding and RNG state, peak memory and how freed memory is kept, whether the hub answers, quiet
transformers."""
import ctypes
import os
import random
import resource
import socket

import torch

from utils.errors import ConfigError


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers (one TCP connection, a few seconds at most)."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def own_random_numbers(device: torch.device):
    """A context whose random draws (CPU, and `device` if it is a GPU) leave the stream outside it where it was:
    an evaluation or a calibration inside it never changes what training draws next."""
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


KERNEL_CACHE_ENTRIES = 128  # compiled CPU kernels kept per cache (oneDNN's and ideep's default: 1,024)


def bound_kernel_caches(entries: int = KERNEL_CACHE_ENTRIES) -> dict:
    """Cap the two caches of compiled CPU kernels behind bf16 matrix products (oneDNN's primitive cache and ideep's
    on top of it) at `entries` each, through their environment variables, read when the first kernel is built
    (so before the first bf16 product; a value already in the environment wins). Each new shape of a product (a
    new padded length, a new number of supervised tokens) builds and keeps new kernels, small blocks that live on
    between a step's big ones: at the default 1,024 entries SFT on Alpaca kept about 7 MiB more each step and
    its heap fragmented around them (80 steps: 4,450 MiB of RSS, 3,803 at 128, as fast: docs/throughput.md).
    Returns the variables as they now are."""
    names = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
    for name in names:
        os.environ.setdefault(name, str(entries))
    return {name: os.environ[name] for name in names}


KEEP_FREED_BELOW_MIB_MAX = 32  # glibc maps a block of its own at most from 32 MiB (DEFAULT_MMAP_THRESHOLD_MAX)


def keep_freed_memory(enabled: bool = True, below_mib: int = 0) -> bool:
    """Keep the memory torch frees inside the process for its next tensors instead of handing it back to the
    OS (Linux with glibc; elsewhere nothing changes). glibc serves large allocations (above a threshold that
    starts at 128 KiB and rises to at most 32 MiB: a batch's logits, an embedding's gradient, a bf16 copy of a
    weight) with a fresh mmap and unmaps them when freed, so each step faults the same big tensors' pages in
    again, zeroed page by page. With mmap off (M_MMAP_MAX = 0) and the heap's top trimmed only past 2 GiB
    (M_TRIM_THRESHOLD), freed blocks are reused. Numerics are untouched; peak RSS grows where the heap
    fragments. below_mib (KEEP_FREED_BELOW_MIB, 1 to 32): only blocks below that size are kept; each larger
    one gets a mapping of its own again (M_MMAP_THRESHOLD fixed there), handed back when freed, so the big
    blocks never split the heap: less peak memory for the page faults of those blocks. Measured in
    docs/throughput.md. Returns whether it applied."""
    if not 0 <= below_mib <= KEEP_FREED_BELOW_MIB_MAX or isinstance(below_mib, bool):
        raise ConfigError(f"KEEP_FREED_BELOW_MIB={below_mib!r}: expected 0 (keep every freed block) or 1 to "
                          f"{KEEP_FREED_BELOW_MIB_MAX} MiB (glibc maps blocks of their own from at most 32 MiB)")
    if not enabled:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return False
    m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4  # glibc's <malloc.h>
    big_blocks = mallopt(m_mmap_threshold, below_mib << 20) if below_mib else mallopt(m_mmap_max, 0)
    return bool(big_blocks) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def quiet_transformers() -> None:
    """Hide transformers' per-load progress bars and info lines (the run's own bar is the one to read)."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
