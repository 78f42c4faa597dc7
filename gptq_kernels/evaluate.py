"""Perplexity of a causal language model over non-overlapping windows of a text."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .data import TextSource, token_stream


@torch.no_grad()
def evaluate_perplexity(model, tokens_or_text: TextSource, tokenizer=None, seqlen: int = 512,
                        max_windows: Optional[int] = None, device=None) -> float:
    """exp(mean next-token negative log-likelihood) over consecutive, non-overlapping windows of seqlen tokens.

    Every window is scored on its own (no context carried over), as in the GPTQ paper's evaluation; the
    tokens after the last whole window are dropped. ``max_windows`` limits the cost on slow machines.
    """
    ids = token_stream(tokens_or_text, tokenizer)
    windows = ids.numel() // seqlen
    if max_windows is not None:
        windows = min(windows, max_windows)
    if windows <= 0:
        raise ValueError(f"the text has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    try:
        for w in range(windows):
            x = ids[w * seqlen:(w + 1) * seqlen].reshape(1, -1).to(device)
            logits = model(input_ids=x, use_cache=False).logits.float()
            nll += float(F.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum"))
            count += seqlen - 1
    finally:
        model.train(was_training)
    return math.exp(nll / count)
