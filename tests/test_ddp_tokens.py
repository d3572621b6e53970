"""DDP weighs every target token alike: a 2-rank step (gloo, CPU) equals one process's step over the
union of both ranks' batches, however unequal their token counts."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from seq2seq.config import ModelConfig, OptimConfig, SchedulerConfig, SearchConfig, ValidationConfig, section
from seq2seq.data import collate
from seq2seq.lit_module import TranslationModule

# Rank 0: two short pairs (~8 target tokens); rank 1: six long ones (~90). Normalising each rank by its
# own count and averaging ranks would weigh a token of rank 0 about 11 times more than one of rank 1.
RANK_LENGTHS = [[(3, 3), (4, 2)], [(12, 15), (14, 13), (11, 16), (13, 14), (10, 15), (12, 12)]]


def rank_examples(rank: int) -> list:
    g = torch.Generator().manual_seed(100 + rank)
    base = sum(len(x) for x in RANK_LENGTHS[:rank])
    return [(base + i, torch.randint(4, 20, (s,), generator=g).tolist(), torch.randint(4, 20, (t,), generator=g).tolist())
            for i, (s, t) in enumerate(RANK_LENGTHS[rank])]


def make_module(world_size: int) -> TranslationModule:
    model = section(ModelConfig, dict(cell="gru", embedding_size=8, encoder_hidden_size=6, decoder_hidden_size=8,
                                      encoder_layers=1, decoder_layers=1, attention_size=6, dropout=0.0,
                                      rnn_dropout=0.0), "model")
    torch.manual_seed(0)
    module = TranslationModule(model, OptimConfig(label_smoothing=0.1), SchedulerConfig(), SearchConfig(),
                               ValidationConfig(), tokenizer=SimpleNamespace(src_vocab_size=20, tgt_vocab_size=20),
                               run_config={})
    module._trainer = SimpleNamespace(world_size=world_size)  # all that training_step asks of its trainer
    module.log = lambda *args, **kwargs: None
    return module


class TrainingStep(nn.Module):
    """What Lightning's DDP wrapper does: forward = the LightningModule's training_step."""

    def __init__(self, module: TranslationModule):
        super().__init__()
        self.module = module

    def forward(self, batch):
        return self.module.training_step(batch, 0)


def ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        module = make_module(world)
        ddp = DistributedDataParallel(TrainingStep(module))
        ddp(collate(rank_examples(rank))).backward()  # DDP averages the gradients over the ranks
        if rank == 0:
            torch.save({name: p.grad for name, p in module.named_parameters()}, out)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two spawned processes: ~30 s on a shared 2-core machine
def test_ddp_gradient_equals_the_single_process_gradient_of_the_union(tmp_path):
    """Mutation: `loss = smoothed / tokens` (each rank by its own count, the old behaviour) -> the DDP
    gradient is the mean of two per-rank averages and differs from the union's by far more than rounding."""
    out = tmp_path / "grads.pt"
    mp.spawn(ddp_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    ddp_grads = torch.load(out, weights_only=True)

    single = make_module(1)
    single.training_step(collate(rank_examples(0) + rank_examples(1)), 0).backward()
    for name, p in single.named_parameters():
        torch.testing.assert_close(ddp_grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
