"""Layer inputs for the GPTQ and GPTQT tests: correlated activations with outliers, weights, Hessians."""
import math

import torch


def correlated_inputs(k, n=2048, seed=0, outliers=4):
    """Activations with correlated channels and a few outlier channels, as LLM layers see them."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, k // 4, generator=g, dtype=torch.float64)
    mix = torch.randn(k // 4, k, generator=g, dtype=torch.float64) / math.sqrt(k // 4)
    x = latent @ mix + 0.1 * torch.randn(n, k, generator=g, dtype=torch.float64)
    idx = torch.randperm(k, generator=g)[:outliers]
    x[:, idx] *= 20.0
    return x


def random_weight(n, k, seed=1):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.02
    w[torch.randint(0, n, (8,), generator=g), torch.randint(0, k, (8,), generator=g)] *= 25.0  # outlier weights
    return w


def hessian_of(x):
    return (2.0 / x.shape[0]) * x.t() @ x


def output_error(w, wq, h):
    """trace((W - Wq) H (W - Wq)^T): proportional to ||X W^T - X Wq^T||^2 over the calibration data."""
    d = (w.double() - wq.double())
    return float(((d @ h.double()) * d).sum())
