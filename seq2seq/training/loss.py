"""The training objective: label-smoothed cross-entropy over the target tokens, padding ignored.

Label smoothing moves `epsilon` of the target distribution onto a uniform one. Uniform over the whole
vocabulary puts some of that mass on PAD and BOS, which are never a correct next token: the model
then learns to give them probability that search must take back. `excluded` names such ids; the
uniform part then covers the other V - len(excluded) pieces only ("real tokens": EOS and UNK included).
"""

from __future__ import annotations

from typing import Sequence

import torch


def label_smoothed_nll(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, epsilon: float,
                       excluded: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (label-smoothed loss sum, NLL sum (detached), target token count), over the positions of `mask`.

    logits [B, T, V], target [B, T] ids, mask [B, T] bool (True at real target tokens), excluded: ids
    that get no smoothing mass. With nothing excluded the smoothed loss is the one of
    `F.cross_entropy(label_smoothing=epsilon)`: (1 - eps) * NLL + eps * the cross-entropy against the
    uniform distribution. Sums, not means: the caller normalises by the token count it chooses (the
    global one under DDP).
    """
    smoothed, nll = _SmoothedNLL.apply(logits, target, mask, epsilon, tuple(excluded))
    return smoothed, nll, mask.sum()


class _SmoothedNLL(torch.autograd.Function):
    """The loss with its gradient written out: d loss / d logits = (softmax - q) at each real position,
    q the smoothed target distribution (1 - eps at the gold id, plus eps / (V - |excluded|) at every
    id not excluded). Autograd's own backward (gather's zeros-then-scatter, log_softmax's backward, the
    broadcast of the uniform sum, their additions) makes several passes over the [B, T, V] tensor; this
    one makes four. On the CPU the loss was a fifth of a quickstart training step."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, epsilon: float,
                excluded: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V], one pass for both losses
        nll_t = -log_probs.gather(2, target.unsqueeze(2)).squeeze(2)  # [B, T]
        if excluded:
            total = log_probs.sum(dim=-1) - log_probs[..., list(excluded)].sum(dim=-1)  # [B, T]
            uniform_t = -total / (log_probs.size(-1) - len(excluded))
        else:
            uniform_t = -log_probs.mean(dim=-1)  # [B, T]
        smoothed = torch.where(mask, (1.0 - epsilon) * nll_t + epsilon * uniform_t, 0.0).sum()
        nll = torch.where(mask, nll_t, 0.0).sum()
        ctx.save_for_backward(log_probs, target, mask)
        ctx.epsilon, ctx.excluded, ctx.dtype = epsilon, excluded, logits.dtype
        ctx.mark_non_differentiable(nll)
        return smoothed, nll

    @staticmethod
    def backward(ctx, grad_smoothed: torch.Tensor, _grad_nll: torch.Tensor):
        log_probs, target, mask = ctx.saved_tensors
        eps, excluded = ctx.epsilon, ctx.excluded
        uniform = eps / (log_probs.size(-1) - len(excluded))
        # In place: the saved log-probabilities become the gradient (a second backward through this
        # graph fails on the changed saved tensor rather than reading wrong values).
        grad = log_probs.exp_()  # [B, T, V] softmax
        grad.sub_(uniform)
        for i in excluded:  # a view per id: no index tensor (nor host-to-device copy)
            grad[..., i].add_(uniform)
        grad.scatter_add_(2, target.unsqueeze(2), grad.new_full((*target.shape, 1), eps - 1.0))
        grad.mul_((mask * grad_smoothed).unsqueeze(2))  # padding positions get no gradient
        return grad.to(ctx.dtype), None, None, None, None
