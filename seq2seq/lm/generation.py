"""Text generation with a recurrent language model: prompts -> batched sampling -> detokenized text.

Each row reads its prompt (`[BOS] + pieces`, packed, so prompts of any lengths share a batch), then draws
one piece at a time from `next_token_distribution` until EOS or `max_len` pieces (EOS counted).
Temperature 0 is greedy decoding (the argmax, no randomness). Otherwise the distribution is
softmax(log_probs / temperature), cut to the `top_k` most likely pieces, then to the smallest set of
most likely pieces whose probability reaches `top_p` (nucleus sampling; pieces tied with a set's last
piece stay in), and renormalised: pieces outside the set have probability exactly zero. A sample's `log_prob` is the model's own (untempered, unfiltered)
log-probability of the pieces it emitted, EOS included. All randomness comes from one `torch.Generator`
on the model's device: the same seed, prompts, `num` and batch size give the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from seq2seq.data.batching import _pad
from seq2seq.model.lm import RecurrentLM


@dataclass
class Sample:
    prompt: int  # index of the prompt it continues
    tokens: list[int]  # generated piece ids (no EOS)
    log_prob: float  # sum of the model's log-probabilities of the generated pieces, EOS included
    token_log_probs: list[float] = field(default_factory=list)  # one per generated piece (EOS included)
    finished: bool = True  # ended with EOS (False: cut at max_len)


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = the whole vocabulary), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 = no nucleus cut), got {top_p}")


def next_token_distribution(log_probs: Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """log_probs [N, V] -> sampling probabilities [N, V] float32 (see the module doc); temperature > 0.

    top_k keeps the k most likely pieces; top_p keeps, in decreasing probability, every piece whose
    preceding mass is still below top_p: the smallest prefix whose mass reaches top_p (at least the most
    likely piece). Both keep the pieces tied with the last one kept (as `search.sample` does), so the
    sets do not depend on how a sort orders equal values.
    """
    logits = log_probs.float() / temperature  # [N, V]
    vocab = logits.size(-1)
    if 0 < top_k < vocab:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # [N, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # [N, V]
    if top_p < 1.0:
        sorted_probs = probs.sort(dim=-1, descending=True).values  # [N, V]
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely pieces
        inside = before < top_p
        inside[:, 0] = True
        smallest = torch.where(inside, sorted_probs, float("inf")).min(dim=-1, keepdim=True).values  # [N, 1]
        probs = probs.masked_fill(probs < smallest, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


@torch.inference_mode()
def generate(lm: RecurrentLM, prompts: Sequence[Sequence[int]], num: int, max_len: int, temperature: float,
             top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
             batch_size: int = 64) -> list[list[Sample]]:
    """`num` samples for each prompt (bare piece ids); result[i] holds prompt i's samples.

    Rows (prompt i, sample j), prompts by decreasing length, are decoded `batch_size` at a time on the LM's device;
    `generator` must live there too.
    """
    check_sampling(temperature, top_k, top_p)
    if num < 1 or max_len < 1 or batch_size < 1:
        raise ValueError(f"num, max_len and batch_size must be >= 1, got {num}, {max_len}, {batch_size}")
    if getattr(lm, "training", False):
        raise ValueError("generate with the model in eval mode (dropout would randomise it): call lm.eval()")
    device = lm.embedding.weight.device
    # Rows by decreasing prompt length, so that each batch's prompts pack sorted (`RecurrentLM.prime`).
    by_length = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    rows = [i for i in by_length for _ in range(num)]
    results: list[list[Sample]] = [[] for _ in prompts]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        for sample in _generate_rows(lm, [prompts[i] for i in chunk], max_len, temperature, top_k, top_p,
                                     generator, device):
            results[chunk[sample.prompt]].append(sample)
    for i, samples in enumerate(results):
        for s in samples:
            s.prompt = i
    return results


def _generate_rows(lm: RecurrentLM, prompts: Sequence[Sequence[int]], max_len: int, temperature: float,
                   top_k: int, top_p: float, generator: torch.Generator | None,
                   device: torch.device) -> list[Sample]:
    """One batch: row r continues prompts[r]; Sample.prompt is the row here."""
    n = len(prompts)
    tokens_in, lengths = _pad(prompts, prefix=lm.bos_id, suffix=None)  # [N, P], [N] CPU
    log_probs, state = lm.prime(tokens_in.to(device), lengths)  # [N, V]
    out_tok = torch.full((n, max_len), lm.pad_id, dtype=torch.long, device=device)
    out_lp = torch.zeros((n, max_len), dtype=torch.float32, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    length = torch.zeros(n, dtype=torch.long, device=device)
    for t in range(max_len):
        if temperature == 0:
            tokens = log_probs.argmax(dim=-1)  # [N]
        else:
            probs = next_token_distribution(log_probs, temperature, top_k, top_p)
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # [N]
        tokens = tokens.masked_fill(done, lm.pad_id)
        out_tok[:, t] = tokens
        out_lp[:, t] = torch.where(done, 0.0, log_probs.gather(1, tokens.unsqueeze(1)).squeeze(1))
        length += (~done).long()
        done = done | (tokens == lm.eos_id)
        if t + 1 == max_len or bool(done.all()):  # one host sync per step: generation is not throughput-bound
            break
        log_probs, state = lm.step(tokens, state)
    tok, lp, lens = out_tok.cpu(), out_lp.cpu(), length.cpu()
    samples = []
    for r in range(n):
        ids = tok[r, :int(lens[r])].tolist()
        finished = bool(ids) and ids[-1] == lm.eos_id
        scores = lp[r, :int(lens[r])].tolist()
        samples.append(Sample(prompt=r, tokens=ids[:-1] if finished else ids, log_prob=float(sum(scores)),
                              token_log_probs=scores, finished=finished))
    return samples
