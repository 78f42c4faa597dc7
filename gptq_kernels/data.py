"""Calibration and evaluation text that needs no download, and turning text into token windows.

The built-in text is the Python Language Reference as it ships with every CPython installation
(``pydoc_data.topics``: the ~80 topics, with repeated paragraphs removed, that ``help("if")``, ``help("NUMBERS")`` ... print, about 460k
characters of English prose with some code). It is the same for a given Python version, present on any
machine, and natural-language heavy. Topics are split, in sorted order, into two disjoint parts: every
fourth topic is evaluation text, the others are calibration text, so a model is never evaluated on the text
it was calibrated with. Users can pass their own text file instead (``--calibration FILE``, ``--text FILE``).
"""
from __future__ import annotations

import functools
import os
from typing import List, Optional, Sequence, Union

import torch

EVAL_EVERY = 4  # topic i (sorted by name) is evaluation text when i % EVAL_EVERY == EVAL_EVERY - 1

TextSource = Union[str, os.PathLike, Sequence[str], torch.Tensor, Sequence[torch.Tensor]]


def _topics() -> List[str]:
    """The topics in sorted order, each without the paragraphs an earlier topic already has.

    Some topics repeat sections of others (a statement's topic and its chapter's); dropping repeats keeps
    the calibration and evaluation parts disjoint.
    """
    from pydoc_data.topics import topics

    seen, out = set(), []
    for key in sorted(topics):
        paragraphs = [p for p in topics[key].split("\n\n") if p.strip() and p not in seen]
        seen.update(paragraphs)
        if paragraphs:
            out.append("\n\n".join(paragraphs))
    return out


@functools.lru_cache(maxsize=None)
def calibration_text() -> str:
    """The calibration part of the built-in text (three quarters of the Language Reference topics)."""
    return "\n\n".join(t for i, t in enumerate(_topics()) if i % EVAL_EVERY != EVAL_EVERY - 1)


@functools.lru_cache(maxsize=None)
def evaluation_text() -> str:
    """The held-out evaluation part of the built-in text (the other quarter).

    Paragraphs that also occur inside the calibration text (a code example quoted in two topics) are left
    out, so no evaluated paragraph was seen during calibration.
    """
    calibration = calibration_text()
    topics = [t for i, t in enumerate(_topics()) if i % EVAL_EVERY == EVAL_EVERY - 1]
    return "\n\n".join(p for t in topics for p in t.split("\n\n") if p not in calibration)


def token_stream(source: TextSource, tokenizer=None) -> torch.Tensor:
    """One 1-D int64 token stream from token ids, a text, a list of texts or the path of a text file.

    A str that names an existing file is read as UTF-8 text; any other str is the text itself.
    """
    if isinstance(source, torch.Tensor):
        return source.reshape(-1).long()
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, torch.Tensor) for s in source):
        return torch.cat([s.reshape(-1).long() for s in source])
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                source = f.read()
        texts = [source]
    elif isinstance(source, (list, tuple)) and all(isinstance(s, str) for s in source):
        texts = list(source)
    else:
        raise TypeError(f"expected token ids (a tensor or list of tensors), a text, a list of texts or a text file "
                        f"path, got {type(source).__name__}")
    if tokenizer is None:
        raise ValueError("text was given but no tokenizer: pass tokenizer= to turn the text into tokens")
    return torch.tensor(tokenizer("\n\n".join(texts))["input_ids"], dtype=torch.long).reshape(-1)


def calibration_samples(source: TextSource, tokenizer=None, nsamples: int = 128, seqlen: int = 512
                        ) -> List[torch.Tensor]:
    """nsamples windows [1, seqlen] of token ids, spread evenly over the source.

    A 2-D tensor [n, L] or a list of tensors is taken as ready-made samples (one per row / element, at most
    nsamples), whatever their length.
    """
    if nsamples <= 0 or seqlen <= 1:
        raise ValueError(f"nsamples must be positive and seqlen > 1, got nsamples={nsamples}, seqlen={seqlen}")
    if isinstance(source, torch.Tensor) and source.dim() == 2:
        return [row.reshape(1, -1).long() for row in source[:nsamples]]
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, torch.Tensor) for s in source):
        return [s.reshape(1, -1).long() for s in source[:nsamples]]
    stream = token_stream(source, tokenizer)
    windows = stream.numel() // seqlen
    if windows == 0:
        raise ValueError(f"the calibration text has {stream.numel()} tokens, fewer than one window of "
                         f"seqlen={seqlen}")
    count = min(nsamples, windows)
    # Evenly spaced windows cover the whole text rather than its first topics only.
    starts = [(i * windows // count) * seqlen for i in range(count)]
    return [stream[s:s + seqlen].reshape(1, -1) for s in starts]


def default_calibration(tokenizer, nsamples: int, seqlen: int, path: Optional[str] = None) -> List[torch.Tensor]:
    return calibration_samples(path if path else calibration_text(), tokenizer, nsamples, seqlen)
