"""Best-of-N from a pool of samples (bench/best_of_n.py): the estimator is the exact mean over every subset."""
import itertools
import math

import torch

from bench.best_of_n import best_of_n_mean, best_of_n_weights, bon_kl


def test_the_pool_estimate_is_the_mean_over_every_n_subset():
    """For each n, the value at the proxy's top sample, averaged over all C(K, n) subsets of the pool."""
    gen = torch.Generator().manual_seed(0)
    proxy, values = torch.randn(3, 7, generator=gen), torch.randn(3, 7, generator=gen)
    for n in range(1, 8):
        brute = torch.tensor([[values[m, max(s, key=lambda j: proxy[m, j])].item()
                               for s in itertools.combinations(range(7), n)] for m in range(3)]).mean(1)
        assert torch.allclose(best_of_n_mean(proxy, values, n), brute.double(), atol=1e-12)
        assert math.isclose(best_of_n_weights(7, n).sum().item(), 1.0, rel_tol=1e-12)
    # best-of-1 is the plain mean; best-of-K is the value at the proxy's best sample
    assert torch.allclose(best_of_n_mean(proxy, values, 1), values.double().mean(1))
    assert torch.equal(best_of_n_mean(proxy, values, 7).float(), values.gather(1, proxy.argmax(1, keepdim=True))[:, 0])


def test_best_of_n_kl():
    """log n - (n - 1) / n: 0 for one sample, growing like log n."""
    assert bon_kl(1) == 0.0
    assert math.isclose(bon_kl(2), math.log(2) - 0.5)
    assert math.isclose(bon_kl(64), math.log(64) - 63 / 64)
