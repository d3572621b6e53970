"""Recurrent language models: learning, sampling, scoring, and fusion into translation.

Model-level tests use tiny randomly initialised models (seconds); the pipeline tests train through
`seq2seq-train`'s own `train(cfg)` on synthetic text.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from seq2seq.decoding import search
from seq2seq.checkpoint.format import MODEL_PREFIX, CheckpointError, make_payload
from seq2seq.checkpoint.loading import load_language_model
from seq2seq.config import ConfigError, LanguageModelConfig, ModelConfig, TokenizerConfig
from seq2seq.lm.fusion import ShallowFusion, VocabularyMismatch, check_vocabularies, rerank
from seq2seq.lm.generation import generate, next_token_distribution
from seq2seq.lm.perplexity import sequence_log_probs
from seq2seq.model import Seq2Seq
from seq2seq.model.lm import RecurrentLM
from seq2seq.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer, train_sentencepiece

from .conftest import synthetic_pairs, write_lines
from .helpers import compose_train, run_script

VOCAB = 24


def tiny_lm(cell: str = "lstm", vocab: int = VOCAB, seed: int = 0, layers: int = 2, eos_bias: float = 0.0) -> RecurrentLM:
    torch.manual_seed(seed)
    cfg = LanguageModelConfig(cell=cell, embedding_size=16, hidden_size=24, layers=layers, dropout=0.1,
                              rnn_dropout=0.1, tie_embeddings=True)
    lm = RecurrentLM(cfg, vocab_size=vocab, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID)
    with torch.no_grad():  # sharper than the initial near-uniform distribution: outputs differ by choice
        lm.output.proj.weight.mul_(4.0)
        lm.output.proj.bias[EOS_ID] += eos_bias
    return lm.eval()


def tiny_translator(vocab: int = VOCAB, seed: int = 1) -> Seq2Seq:
    torch.manual_seed(seed)
    cfg = ModelConfig(cell="gru", embedding_size=16, encoder_hidden_size=16, decoder_hidden_size=24,
                      encoder_layers=1, attention="luong_general", dropout=0.0, rnn_dropout=0.0)
    return Seq2Seq(cfg, src_vocab_size=vocab, tgt_vocab_size=vocab, pad_id=PAD_ID, bos_id=BOS_ID,
                               eos_id=EOS_ID).eval()


def sources(batch: int = 5, seed: int = 3):
    from seq2seq.data.batching import collate_source

    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(4, VOCAB, (int(n),), generator=g).tolist() for n in torch.randint(2, 9, (batch,), generator=g)]
    seqs.sort(key=len, reverse=True)
    return collate_source(seqs)


class SourceFree:
    """The LM behind the translation decoder-step contract (its state ignores the source): lets the
    project's own `search.greedy` serve as the reference greedy decoder."""

    def __init__(self, lm: RecurrentLM):
        self.lm, self.pad_id, self.bos_id, self.eos_id, self.training = lm, lm.pad_id, lm.bos_id, lm.eos_id, False

    def init_state(self, src, src_lengths, src_mask):
        return self.lm.init_state(src.size(0), src.device)

    def step(self, prev, state):
        log_probs, state = self.lm.step(prev, state)
        return log_probs, state, None

    def reorder_state(self, state, rows, *, sources):
        return self.lm.reorder_state(state, rows)


# ------------------------------------------------------------------------------------ the model
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_step_by_step_equals_teacher_forcing(cell):
    """`step` from the zero state and BOS scores a sentence as `forward` does, and `prime` (packed prompts
    of different lengths) ends in the state that stepping through each prompt reaches.
    Mutation: `prime` without packing (right padding runs through the RNN) fails the shorter prompt."""
    lm = tiny_lm(cell)
    seqs = [[5, 6, 7, 8, 9], [10, 11]]
    tokens, lengths = torch.tensor([[BOS_ID, 5, 6, 7, 8, 9], [BOS_ID, 10, 11, PAD_ID, PAD_ID, PAD_ID]]), torch.tensor([6, 3])
    full = torch.log_softmax(lm(tokens), dim=-1)  # [2, 6, V]
    state = lm.init_state(2, "cpu")
    prev = tokens[:, 0]
    for t in range(6):
        log_probs, state = lm.step(prev, state)
        torch.testing.assert_close(log_probs[0], full[0, t])
        if t < 3:
            torch.testing.assert_close(log_probs[1], full[1, t])
        if t + 1 < 6:
            prev = tokens[:, t + 1]
    primed, primed_state = lm.prime(tokens, lengths)
    torch.testing.assert_close(primed[0], full[0, 5])
    torch.testing.assert_close(primed[1], full[1, 2])
    assert sequence_log_probs(lm, seqs, "cpu")[1] == pytest.approx(
        float(full[1, 0, 10] + full[1, 1, 11] + full[1, 2, EOS_ID]), abs=1e-5)
    assert primed_state.hidden.shape == state.hidden.shape


def test_tied_embeddings_share_one_matrix():
    lm = tiny_lm()
    assert lm.output.proj.weight is lm.embedding.weight
    cfg = LanguageModelConfig(cell="gru", embedding_size=16, hidden_size=24, layers=1, dropout=0.0,
                              rnn_dropout=0.0, tie_embeddings=False)
    untied = RecurrentLM(cfg, vocab_size=VOCAB, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID)
    assert untied.output.proj.weight is not untied.embedding.weight


# ------------------------------------------------------------------------------------ sampling
def test_temperature_zero_is_greedy():
    """Temperature 0 gives exactly `search.greedy`'s tokens and scores over the same model.
    Mutation: `_generate_rows` stepping the LM with the previous token instead of the new one fails."""
    lm = tiny_lm(seed=5)  # a greedy path that does not just repeat one piece
    samples = generate(lm, [[]] * 3, num=2, max_len=12, temperature=0.0)
    src = torch.full((1, 1), 4)
    (ref,) = search.greedy(SourceFree(lm), src, torch.tensor([1]), torch.ones(1, 1, dtype=torch.bool),
                           max_len_a=12, max_len_b=0.0)
    assert len(set(ref.tokens)) >= 4  # a real sequence, not an immediate EOS nor one piece repeated
    for row in samples:
        for s in row:
            assert s.tokens == ref.tokens and s.finished == ref.finished
            assert s.log_prob == pytest.approx(ref.score, abs=1e-4)
    # top_k=1 at any temperature is greedy too
    g = torch.Generator().manual_seed(5)
    assert [s.tokens for s in generate(lm, [[]], num=3, max_len=12, temperature=1.7, top_k=1, generator=g)[0]] == [ref.tokens] * 3


def test_same_seed_same_samples_and_prompts_are_continued():
    """Mutation: not passing `generator` to torch.multinomial (the global RNG) fails the equality."""
    lm = tiny_lm()
    prompts = [[5, 6], [], [7, 8, 9, 10]]

    def run(seed):
        return [[s.tokens for s in row] for row in generate(lm, prompts, num=4, max_len=15, temperature=1.0,
                                                             generator=torch.Generator().manual_seed(seed), batch_size=5)]

    torch.manual_seed(123)
    first = run(1)
    torch.manual_seed(999)  # the global RNG must not matter
    assert run(1) == first
    assert run(2) != first
    assert len({tuple(t) for row in first for t in row}) > 3  # really random


def allowed_sets(log_probs: torch.Tensor, temperature: float, top_k: int, top_p: float) -> list[set[int]]:
    """The pieces each row may sample, by the definition (plain Python over sorted probabilities; pieces
    tied with the last one kept stay in)."""
    out = []
    for row in log_probs.tolist():
        logits = [x / temperature for x in row]
        allowed = set(range(len(row)))
        if top_k:
            kth = sorted(logits, reverse=True)[top_k - 1]
            allowed = {i for i in allowed if logits[i] >= kth}
        total = sum(math.exp(logits[i]) for i in allowed)
        probs = {i: math.exp(logits[i]) / total for i in allowed}
        mass, smallest = 0.0, None
        for i in sorted(allowed, key=lambda i: -probs[i]):
            if mass >= top_p:
                break
            mass, smallest = mass + probs[i], probs[i]
        out.append({i for i in allowed if probs[i] >= smallest})
    return out


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 5, 1.0), (0.7, 0, 0.6), (1.3, 8, 0.9), (1.0, 1, 0.5),
                                                     (2.0, 0, 0.95), (0.5, 3, 0.99)])
def test_top_k_top_p_never_leave_their_sets(temperature, top_k, top_p):
    """The sampling distribution is zero outside the top-k / nucleus set, proportional to the tempered
    probabilities inside it, and the nucleus is the smallest prefix reaching top_p; sampled pieces of a
    real model stay in the set at every step.
    Mutation: cutting the nucleus at `cumsum >= top_p` (instead of the mass before each piece) drops the
    piece that crosses top_p and fails; so does a top-k cut at the (k-1)-th value."""
    g = torch.Generator().manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(64, 30, generator=g) * 2.0, dim=-1)
    log_probs[0, :6] = log_probs[0].max() + 0.5  # six tied at the top: a cut among them keeps all six
    log_probs = torch.log_softmax(log_probs, dim=-1)
    probs = next_token_distribution(log_probs, temperature, top_k, top_p)
    tempered = torch.softmax(log_probs / temperature, dim=-1)
    for r, allowed in enumerate(allowed_sets(log_probs, temperature, top_k, top_p)):
        support = set((probs[r] > 0).nonzero().flatten().tolist())
        assert support == allowed, r
        inside = sorted(allowed)
        torch.testing.assert_close(probs[r, inside], tempered[r, inside] / tempered[r, inside].sum())
    # and on a real model, step by step: every sampled token lies in that step's set
    lm = tiny_lm()
    seen = []
    original = lm.step

    def spy(prev, state):
        seen.append(prev.clone())
        out = original(prev, state)
        steps.append(out[0])
        return out

    steps = []
    primed, _ = lm.prime(torch.full((6, 1), BOS_ID), torch.ones(6, dtype=torch.long))
    steps.append(primed)
    lm.step = spy
    generate(lm, [[]] * 6, num=1, max_len=10, temperature=temperature, top_k=top_k, top_p=top_p,
             generator=torch.Generator().manual_seed(1))
    for dist, chosen in zip(steps, seen):
        for r, allowed in enumerate(allowed_sets(dist, temperature, top_k, top_p)):
            if int(chosen[r]) != PAD_ID:  # rows already finished carry padding
                assert int(chosen[r]) in allowed


# ------------------------------------------------------------------------------------ fusion
def test_fusion_weight_zero_is_the_plain_translation():
    """Weight 0 gives exactly the plain model's tokens and scores, greedy and beam.
    Mutation: renormalising the fused scores (log_softmax(log p_TM + w log p_LM)) changes the scores."""
    model, lm = tiny_translator(), tiny_lm()
    src, lengths, mask = sources()
    fused = ShallowFusion(model, lm, 0.0)
    for plain, with_lm in (
            (search.greedy(model, src, lengths, mask, 3, 1.5), search.greedy(fused, src, lengths, mask, 3, 1.5)),
            (search.beam_search(model, src, lengths, mask, 4, 1.0, 3, 1.5, nbest=4),
             search.beam_search(fused, src, lengths, mask, 4, 1.0, 3, 1.5, nbest=4))):
        flat = lambda hyps: [h for row in hyps for h in (row if isinstance(row, list) else [row])]  # noqa: E731
        assert [(h.tokens, h.score) for h in flat(plain)] == [(h.tokens, h.score) for h in flat(with_lm)]


def test_fusion_beam_one_equals_greedy_and_scores_are_tm_plus_weighted_lm():
    """Beam 1 with fusion reproduces greedy with fusion (tokens and scores), and every fused hypothesis
    of a wide beam scores exactly log P_TM(y|x) + w log P_LM(y), recomputed independently.
    Mutation: `ShallowFusion.reorder_state` leaving the LM state in place when beams are reshuffled
    (within_source) fails the recomputed scores."""
    model, lm = tiny_translator(), tiny_lm()
    src, lengths, mask = sources(6)
    fused = ShallowFusion(model, lm, 0.5)
    greedy = search.greedy(fused, src, lengths, mask, 3, 1.5)
    beam1 = search.beam_search(fused, src, lengths, mask, 1, 1.0, 3, 1.5)
    assert [(h.tokens, h.score) for h in greedy] == [(row[0].tokens, row[0].score) for row in beam1]
    plain_greedy = search.greedy(model, src, lengths, mask, 3, 1.5)
    assert [h.tokens for h in greedy] != [h.tokens for h in plain_greedy]  # the LM did change something

    beams = search.beam_search(fused, src, lengths, mask, 4, 1.0, 3, 1.5, nbest=4)
    checked = 0
    for b, row in enumerate(beams):
        tm_state = model.init_state(src[b:b + 1], lengths[b:b + 1], mask[b:b + 1])
        for h in row:
            tm = forced_score(lambda prev, st: model.step(prev, st)[:2], tm_state, h)
            lm_score = forced_score(lm.step, lm.init_state(1, "cpu"), h)
            assert h.score == pytest.approx(tm + 0.5 * lm_score, abs=1e-4)
            checked += 1
    assert checked == 6 * 4


def forced_score(step, state, h) -> float:
    """Sum of log-probs of h's tokens (and EOS if finished) by stepping one row from `state` with `step`."""
    prev, total = torch.tensor([BOS_ID]), 0.0
    for token in h.tokens + ([EOS_ID] if h.finished else []):
        log_probs, state = step(prev, state)
        total += float(log_probs[0, token])
        prev = torch.tensor([token])
    return total


def test_rerank_orders_by_combined_score():
    """Mutation: ranking by the LM score alone (or forgetting the weight) picks another hypothesis."""
    from seq2seq.decoding.output import Candidate
    from seq2seq.decoding.translator import Translation

    spm = train_sentencepiece(synthetic_pairs(200, 0)[1], TokenizerConfig(vocab_size=60, byte_fallback=False))
    tok = Tokenizer(spm, spm)
    lm = tiny_lm(vocab=tok.tgt_vocab_size)
    texts = synthetic_pairs(4, 5)[1]
    lm_scores = sequence_log_probs(lm, tok.encode_tgt(texts), "cpu")
    lengths = [len(s) + 1 for s in tok.encode_tgt(texts)]
    tm_scores = [-3.0, -4.0, -5.0, -6.0]
    t = Translation(text=texts[0], score=tm_scores[0], tokens=[], src_tokens=[5], nbest=[Candidate(x, s, s) for x, s in zip(texts, tm_scores)])
    for weight in (0.0, 0.3, 3.0):
        (out,) = rerank([t], lm, tok, weight, 1.0, "cpu")
        keys = [(s + weight * l) / n for s, l, n in zip(tm_scores, lm_scores, lengths)]
        best = max(range(4), key=lambda i: keys[i])
        assert out.text == texts[best] and out.score == pytest.approx(tm_scores[best] + weight * lm_scores[best])
        assert [c.text for c in out.nbest] == [texts[i] for i in sorted(range(4), key=lambda i: -keys[i])]


def test_vocabulary_mismatch_is_named():
    """Mutation: comparing only vocabulary sizes lets two same-sized, different vocabularies through."""
    a = train_sentencepiece(synthetic_pairs(200, 0)[1], TokenizerConfig(vocab_size=60, byte_fallback=False))
    b = train_sentencepiece(synthetic_pairs(200, 0)[0], TokenizerConfig(vocab_size=60, byte_fallback=False))
    check_vocabularies(Tokenizer(a, a), Tokenizer(a, a), "tm.ckpt", "lm.ckpt")
    with pytest.raises(VocabularyMismatch, match=r"--lm lm\.ckpt: .*piece \d+ is .*tokenizer_from=tm\.ckpt"):
        check_vocabularies(Tokenizer(a, a), Tokenizer(b, b), "tm.ckpt", "lm.ckpt")


# ------------------------------------------------------------------------------------ pipeline
N_COUNT = 6  # sentences a^n b^n, n uniform in 1..N_COUNT: entropy ln N_COUNT nats per sentence


def counting(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["a" * k + "b" * k for k in (rng.randint(1, N_COUNT) for _ in range(n))]


def lm_overrides(root: Path, steps: int, extra: tuple[str, ...] = ()) -> list[str]:
    return ["experiment=lm_quickstart", f"data.train_files=[{root}/train.txt.gz]", f"data.valid_files=[{root}/valid.txt]",
            f"data.test_files=[{root}/test.txt]", f"data.cache_dir={root}/cache", "data.corpus=counting",
            "data.tokenizer.model_type=char", "data.tokenizer.byte_fallback=false", "model.hidden_size=32",
            "model.embedding_size=16", "model.dropout=0.0", f"trainer.max_steps={steps}", "trainer.max_epochs=1000",
            f"trainer.val_check_interval={steps}", "trainer.check_val_every_n_epoch=null",
            "trainer.enable_progress_bar=false", "scheduler.warmup_steps=10", "optim.lr=0.03",
            "batching.max_tokens=1000", *extra]


@pytest.fixture(scope="module")
def counting_lm(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A character-level LM trained by `train(cfg)` on a^n b^n (train text gzipped) -> (root, best.ckpt, metrics)."""
    from seq2seq.cli.train import train

    root = tmp_path_factory.mktemp("counting")
    write_lines(root / "train.txt.gz", counting(1500, 1))
    write_lines(root / "valid.txt", counting(200, 2))
    write_lines(root / "test.txt", counting(300, 3))
    metrics = train(compose_train(lm_overrides(root, 300), root / "run"))
    return root, root / "run" / "checkpoints" / "best.ckpt", metrics


def test_lm_learns_a_counting_language_near_its_entropy(counting_lm):
    """seq2seq-train's pipeline (char sentencepiece, .gz text) learns a^n b^n: test cross-entropy per sentence
    within 0.25 nats of the entropy ln 6 (a model that cannot count the b's pays ~1 nat more).
    Mutation: `collate_lm` training on unshifted targets (tokens_out = tokens_in) fails it."""
    root, best, metrics = counting_lm
    lm, tok, config = load_language_model(best)
    assert config["data"]["tokenizer"]["model_type"] == "char"
    lines = counting(300, 3)
    per_sentence = -sum(sequence_log_probs(lm, tok.encode_tgt(lines), "cpu")) / len(lines)
    entropy = math.log(N_COUNT)
    assert entropy - 0.1 < per_sentence < entropy + 0.25, (per_sentence, entropy)
    # test perplexity per word (the sentence + its end: 2 words) is the same quantity
    assert metrics["test/word_ppl"] == pytest.approx(math.exp(per_sentence / 2), rel=1e-3)
    report = json.loads((best.parent / "test.en.perplexity.json").read_text())
    assert report["words"] == 600 and report["ppl"] == pytest.approx(metrics["test/ppl"])
    # greedy generation continues a prompt by counting: "aaa" -> "bbb" then the end
    samples = generate(lm, tok.encode_tgt(["aaab"]), num=1, max_len=10, temperature=0.0)[0][0]
    assert tok.decode_tgt([tok.encode_tgt(["aaab"])[0] + samples.tokens])[0] == "aaabbb" and samples.finished


def console(capsys, main, *args) -> tuple[int, str, str]:
    """A console script's `main(args)` in this process (each start of one costs seconds of imports):
    (exit status, standard output, standard error)."""
    capsys.readouterr()
    try:
        code = main([*map(str, args)])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_and_score_console_script(counting_lm, tmp_path, capsys):
    """seq2seq-generate: text and jsonl samples (prompts from the flag, a file, stdin), --temperature 0 = greedy,
    the same seed = the same samples, --score prints perplexity; usage errors exit 2. The stdin case runs the
    console script itself, the others its `main` in this process."""
    from seq2seq.cli import generate as generate_cli
    from seq2seq.cli import translate

    root, best, metrics = counting_lm
    args = ["--checkpoint", str(best), "--num", "3", "--max-len", "20", "--seed", "4"]
    code, text, _ = console(capsys, generate_cli.main, *args, "--prompt", "aab", "--prompt", "aaaab",
                            "--temperature", "0")
    assert code == 0 and text.splitlines() == ["aabb"] * 3 + ["aaaabbbb"] * 3
    prompts = write_lines(tmp_path / "prompts.txt", ["aaa", ""])
    code, a, _ = console(capsys, generate_cli.main, *args, "--input", prompts, "--format", "jsonl", "--top-k", "2",
                         "--top-p", "0.9")
    assert code == 0
    b = run_script("generate", *args, "--input", "-", "--format", "jsonl", "--top-k", "2", "--top-p", "0.9",
                   input="aaa\n\n").stdout
    assert a == b
    rows = [json.loads(line) for line in a.splitlines()]
    assert [(r["prompt_line"], r["sample"]) for r in rows] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert all(r["text"].startswith(r["prompt"]) and len(r["token_log_probs"]) == len(r["pieces"]) + r["finished"]
               and r["log_prob"] == pytest.approx(sum(r["token_log_probs"])) for r in rows)
    code, scored, _ = console(capsys, generate_cli.main, "--checkpoint", best, "--score", root / "test.txt")
    assert code == 0
    assert f"perplexity {metrics['test/ppl']:.2f} per piece" in scored and f"{metrics['test/word_ppl']:.2f} per word" in scored
    code, _, err = console(capsys, generate_cli.main, "--checkpoint", best, "--top-p", "0")
    assert code == 2 and "--top-p must be in (0, 1]" in err
    code, _, err = console(capsys, translate.main, "--checkpoint", best, "--input", prompts)
    assert code == 2 and "is a language model" in err


def save_lm_checkpoint(path: Path, lm: RecurrentLM, tokenizer: Tokenizer) -> Path:
    cfg = LanguageModelConfig(cell="lstm", embedding_size=16, hidden_size=24, layers=2, dropout=0.1, rnn_dropout=0.1)
    config = {"model": {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}, "data": {}}
    torch.save({"state_dict": {MODEL_PREFIX + k: v for k, v in lm.state_dict().items()},
                "seq2seq": make_payload(config, tokenizer)}, path)
    return path


def test_translate_with_lm_fusion_and_rerank(tmp_path, capsys):
    """seq2seq-translate --lm (its `main`, in this process): weight 0 prints the plain output; fusion and
    reranking run; a mismatched vocabulary is one `error:` line before any output, naming both checkpoints.
    Mutation: dropping `check_vocabularies` from `attach_lm` lets the mismatched LM translate."""
    from seq2seq.cli import translate

    from .helpers import tiny_model_and_tokenizer

    model_cfg = ModelConfig(cell="gru", embedding_size=16, encoder_hidden_size=16, decoder_hidden_size=24,
                            encoder_layers=1, dropout=0.0, rnn_dropout=0.0)
    model, tok, (src, _) = tiny_model_and_tokenizer(model_cfg, 200, 0, 300)
    config = {"model": {f: getattr(model_cfg, f) for f in model_cfg.__dataclass_fields__},
              "search": {"beam_size": 1, "length_penalty": 1.0, "max_len_a": 3, "max_len_b": 1.0}}
    tm = tmp_path / "tm.ckpt"
    torch.save({"state_dict": {MODEL_PREFIX + k: v for k, v in model.state_dict().items()},
                "seq2seq": make_payload(config, tok)}, tm)
    lm = save_lm_checkpoint(tmp_path / "lm.ckpt", tiny_lm(vocab=tok.tgt_vocab_size), tok)
    inp = write_lines(tmp_path / "in.de", src[:8] + [""])
    common = ["--checkpoint", tm, "--input", inp, "--quiet"]
    code, plain, _ = console(capsys, translate.main, *common, "--format", "jsonl")
    assert code == 0 and len(plain.splitlines()) == 9
    code, zero, _ = console(capsys, translate.main, *common, "--format", "jsonl", "--lm", lm, "--lm-weight", "0")
    assert code == 0 and zero == plain
    code, fused, _ = console(capsys, translate.main, *common, "--lm", lm, "--lm-weight", "1.0", "--beam-size", "3")
    assert code == 0
    code, reranked, _ = console(capsys, translate.main, *common, "--lm", lm, "--lm-rerank", "--beam-size", "3",
                                "--nbest", "2")
    assert code == 0 and len(fused.splitlines()) == 9 and len(reranked.splitlines()) == 18
    code, _, err = console(capsys, translate.main, "--checkpoint", tm, "--input", inp, "--lm", lm, "--lm-rerank")
    assert code == 2 and "--beam-size K" in err

    other = train_sentencepiece(synthetic_pairs(200, 9)[0], TokenizerConfig(vocab_size=300, byte_fallback=True))
    other_lm = save_lm_checkpoint(tmp_path / "other.ckpt", tiny_lm(vocab=Tokenizer(other, other).tgt_vocab_size),
                                  Tokenizer(other, other))
    out = tmp_path / "out.txt"
    code, _, err = console(capsys, translate.main, "--checkpoint", tm, "--input", inp, "--output", out,
                           "--lm", other_lm)
    assert code == 2 and err.count("error:") == 1
    assert f"--lm {other_lm}" in err and f"tokenizer_from={tm}" in err and not out.exists()
    with pytest.raises(CheckpointError, match="is a translation model"):
        load_language_model(tm)


# ------------------------------------------------------------------------------------ data and config
def test_monolingual_text_is_validated_and_held_out(tmp_path):
    """Invalid UTF-8 names the file and line (the parallel reader's check); without valid_files the last
    valid_holdout lines validate; tokenizer_from takes a checkpoint's target model.
    Mutation: reading the training files without `corpus.read_lines` (errors='replace') fails the first case."""
    from seq2seq.config import MonolingualDataConfig
    from seq2seq.data.corpus import CorpusError
    from seq2seq.lm.data import prepare_monolingual

    lines = synthetic_pairs(120, 0)[1]
    good = write_lines(tmp_path / "good.txt.gz", lines)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nanother\nbroken \xff here\n")
    cfg = dict(corpus="toy", cache_dir=str(tmp_path / "cache"), tokenizer=TokenizerConfig(vocab_size=60, byte_fallback=False))
    with pytest.raises(CorpusError, match=r"bad\.txt: line 3: invalid UTF-8"):
        prepare_monolingual(MonolingualDataConfig(train_files=[str(good), str(bad)], **cfg))
    corpus = prepare_monolingual(MonolingualDataConfig(train_files=[str(good)], valid_holdout=20, **cfg))
    assert corpus.splits["valid"].text == lines[-20:] and len(corpus.splits["train"]) == 100
    assert "test" not in corpus.splits
    ckpt = save_lm_checkpoint(tmp_path / "lm.ckpt", tiny_lm(vocab=corpus.tokenizer.tgt_vocab_size), corpus.tokenizer)
    other = prepare_monolingual(MonolingualDataConfig(train_files=[str(good)], valid_holdout=20, tokenizer_from=str(ckpt),
                                                      **{**cfg, "tokenizer": TokenizerConfig(vocab_size=40)}))
    assert other.tokenizer.state_dict() == corpus.tokenizer.state_dict()
    with pytest.raises(CorpusError, match="too few to hold out"):
        prepare_monolingual(MonolingualDataConfig(train_files=[str(good)], valid_holdout=500, **cfg))


def test_lm_and_translation_sections_do_not_mix(tmp_path):
    from seq2seq.cli.train import train

    with pytest.raises(ConfigError, match="use data=monolingual"):
        train(compose_train(["model=rnn_lm"], tmp_path / "a"))
    with pytest.raises(ConfigError, match="use model=rnn_lm"):
        train(compose_train(["data=monolingual"], tmp_path / "b"))
    with pytest.raises(ConfigError, match="'validation.metric' is 'bleu'.*valid options: loss, ppl"):
        train(compose_train(["experiment=lm_quickstart", "validation.metric=bleu"], tmp_path / "c"))


def test_lm_trains_under_ddp_and_resumes_in_one_process(tmp_path, ddp_launch_env):
    """`seq2seq-train` of an LM with 2 processes (trainer=ddp_cpu): the validation perplexities, summed over
    the ranks' shards, equal the perplexity of the whole validation text under the checkpoint written at
    that validation; the run then resumes from last.ckpt in a single process.
    Mutation: `LanguageModelModule.on_validation_epoch_end` skipping the reduce over ranks (one shard's
    sums) fails the equality."""
    from seq2seq.cli.train import train
    from seq2seq.lm.perplexity import score_text

    from .helpers import read_metrics, series

    root = tmp_path / "text"
    write_lines(root / "train.txt.gz", counting(400, 1))
    write_lines(root / "valid.txt", counting(41, 2))
    write_lines(root / "test.txt", counting(20, 3))
    run = tmp_path / "run"
    overrides = [o for o in lm_overrides(root, 4) if not o.startswith("trainer.max_steps")]
    # seq2seq-train ... trainer=ddp_cpu: spawned workers, launched from this process
    train(compose_train([*overrides, "trainer=ddp_cpu", "trainer.devices=2", "trainer.max_steps=4",
                         "test_after_training=false"], run))
    rows = read_metrics(run)
    lm, tok, _ = load_language_model(run / "checkpoints" / "last.ckpt")
    whole = score_text(lm, tok, counting(41, 2), "cpu")
    assert series(rows, "val/ppl")[-1] == pytest.approx(whole.ppl, rel=1e-4)
    assert series(rows, "val/word_ppl")[-1] == pytest.approx(whole.word_ppl, rel=1e-4)
    # seq2seq-train ... ckpt_path=last without trainer=ddp_cpu: one process, this one
    train(compose_train([*overrides, "trainer.max_steps=6", "trainer.val_check_interval=2", "ckpt_path=last",
                         "test_after_training=false"], run))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
