"""The process: seeding and RNG state, peak memory, whether the hub answers, quiet transformers."""
import random
import resource
import socket

import torch


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


def quiet_transformers() -> None:
    """Hide transformers' per-load progress bars and info lines (the run's own bar is the one to read)."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
