"""DDP on 2 gloo ranks (CPU), one spawn for both checks: every target token weighs alike (a DDP step
equals one process's step over the union of both ranks' batches, however unequal their token counts),
and a rank whose validation decoding fails does not leave the other waiting in a collective."""

from __future__ import annotations

import faulthandler
import json
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from seq2seq.config import ModelConfig, OptimConfig, SchedulerConfig, SearchConfig, ValidationConfig, section
from seq2seq.data.batching import collate
from seq2seq.training.module import TranslationModule

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


class FailingTranslator:
    def translate(self, lines):
        raise torch.OutOfMemoryError("CUDA out of memory (injected, even for one sentence)")


class EchoTranslator:
    def translate(self, lines):
        return [SimpleNamespace(text=line.upper()) for line in lines]


def ddp_worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    # Should a rank hang, its stacks land in a file the test prints when its deadline passes.
    stacks = open(f"{out}.rank{rank}.stacks", "w")  # noqa: SIM115 -- open until the process ends
    faulthandler.dump_traceback_later(120, exit=False, file=stacks)
    # Ranks meet through a file, not a TCP port picked in advance (another process may take a port
    # between picking and binding it). A short collective timeout: a rank left waiting fails the test
    # in seconds instead of 30 minutes.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=30))
    try:
        module = make_module(world)
        ddp = DistributedDataParallel(TrainingStep(module))
        ddp(collate(rank_examples(rank))).backward()  # DDP averages the gradients over the ranks
        if rank == 0:
            torch.save({name: p.grad for name, p in module.named_parameters()}, out)

        # Validation decoding: rank 1 runs out of memory; both ranks must raise, neither may hang.
        def reduce(tensor, reduce_op):
            dist.all_reduce(tensor)
            return tensor

        module._trainer = SimpleNamespace(world_size=world, global_rank=rank, strategy=SimpleNamespace(reduce=reduce))
        module.translator = FailingTranslator if rank == 1 else EchoTranslator
        try:
            module.decode_split([f"sentence {i}" for i in range(5)])
            outcome = "returned"
        except Exception as e:  # noqa: BLE001 -- recorded for the test
            outcome = f"{type(e).__name__}: {e}"
        with open(f"{out}.rank{rank}.json", "w") as f:
            json.dump(outcome, f)
        # Neither rank tears gloo down while the other may still be in a collective: a rank that exits
        # under a peer's pending operation can abort ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()
        faulthandler.cancel_dump_traceback_later()


def test_ddp_weighs_tokens_globally_and_ranks_agree_on_validation_failures(tmp_path):
    """Mutation: `loss = smoothed / tokens` (each rank by its own count, the old behaviour) -> the DDP
    gradient is the mean of two per-rank averages and differs from the union's by far more than rounding."""
    out = tmp_path / "grads.pt"
    context = mp.spawn(ddp_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=False)
    deadline = time.monotonic() + 150
    while not context.join(timeout=5):
        if time.monotonic() > deadline:  # a rank stuck in a collective: fail instead of hanging
            for process in context.processes:
                process.kill()
            stacks = "\n".join(f"rank {r}:\n" + p.read_text() for r in range(2)
                               if (p := tmp_path / f"grads.pt.rank{r}.stacks").is_file())
            pytest.fail(f"a DDP rank did not finish within 150 s (waiting in a collective?); stacks:\n{stacks}")
    ddp_grads = torch.load(out, weights_only=True)

    single = make_module(1)
    single.training_step(collate(rank_examples(0) + rank_examples(1)), 0).backward()
    for name, p in single.named_parameters():
        torch.testing.assert_close(ddp_grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)

    # Mutation (validation): rank 0 going on to all_gather_object without the agreed failure flag ->
    # it waits there (no outcome written, or a collective error instead of this message): fails.
    outcomes = [json.loads((tmp_path / f"grads.pt.rank{r}.json").read_text()) for r in range(2)]
    assert outcomes[1].startswith("OutOfMemoryError"), outcomes
    assert outcomes[0].startswith("RuntimeError: validation decoding failed on 1 other rank"), outcomes
