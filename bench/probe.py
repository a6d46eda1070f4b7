"""Matmul probe: what the CPU gives right now, to print beside every timing.

    python bench/probe.py              # fp32 and bf16, 2048 x 2048, all threads, about 1 s each
    python bench/probe.py --threads 1

A shared machine can run at half speed for minutes (a quiet 2-thread CPU here gives ~200 GFLOP/s fp32
and ~680 bf16). A timing is comparable with another only when the probes beside them agree.
"""
import argparse
import time

import torch


def matmul_gflops(
    dtype: torch.dtype = torch.float32, n: int = 2048, seconds: float = 1.0, threads: int = None
) -> float:
    """n x n matmul throughput in GFLOP/s (2 n^3 per product), products repeated for about `seconds`.
    Where one product would take over a quarter of that (bf16 without hardware support runs at well under
    1 GFLOP/s: a 2048 product takes minutes), n is halved until it does not, down to 256."""
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(256, 256, dtype=dtype), torch.randn(256, 256, dtype=dtype)
        a @ b  # warm up (thread pool, kernels)
        start = time.perf_counter()
        a @ b
        small = time.perf_counter() - start  # one 256 product
        while n > 256 and small * (n / 256) ** 3 > seconds / 4:
            n //= 2
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm up
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            count += 1
        return 2 * n ** 3 * count / (time.perf_counter() - start) / 1e9
    finally:
        torch.set_num_threads(saved)


def probe(threads: int = None) -> dict:
    """{'fp32_gflops', 'bf16_gflops', 'threads'} measured now."""
    return {
        "fp32_gflops": matmul_gflops(torch.float32, threads=threads),
        "bf16_gflops": matmul_gflops(torch.bfloat16, threads=threads),
        "threads": threads or torch.get_num_threads(),
    }


def describe(p: dict) -> str:
    return f"matmul probe ({p['threads']} threads): fp32 {p['fp32_gflops']:.0f} GFLOP/s, bf16 {p['bf16_gflops']:.0f} GFLOP/s"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    print(describe(probe(parser.parse_args().threads)))
