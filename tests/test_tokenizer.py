"""seq2seq.data.tokenizer: training, special ids, encode/decode, serialisation, clear errors."""

from __future__ import annotations

import io
import pickle
import random
import re

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seq2seq.config import TokenizerConfig
from seq2seq.data.corpus import clean_text
from seq2seq.data.tokenizer import (BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, TokenizerError,
                               train_sentencepiece)

from .conftest import synthetic_pairs

SRC, TGT = synthetic_pairs(400, seed=5)


def _random_word_lines(n: int, seed: int) -> list[str]:
    """Random letter strings: rich enough in merges for a byte-fallback vocabulary of a few hundred."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyzäöüß"
    return [" ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 7)))
                     for _ in range(rng.randint(3, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def joint() -> Tokenizer:
    model = train_sentencepiece(SRC + TGT, TokenizerConfig(vocab_size=80, byte_fallback=False))
    return Tokenizer(model, model)


@pytest.fixture(scope="module")
def byte_tok() -> Tokenizer:
    model = train_sentencepiece(_random_word_lines(1500, 0), TokenizerConfig(vocab_size=400))
    return Tokenizer(model, model)


def test_special_ids_and_sizes(joint):
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert joint.src_pieces([0, 1, 2, 3]) == ["<pad>", "<unk>", "<s>", "</s>"]
    assert joint.tgt_pieces(np.array([0, 1, 2, 3])) == ["<pad>", "<unk>", "<s>", "</s>"]
    assert joint.src_vocab_size == joint.tgt_vocab_size == 80
    assert joint.joint


def test_round_trip(joint):
    ids = joint.encode_src(SRC[:50])
    assert len(ids) == 50 and all(isinstance(i, int) for seq in ids for i in seq)
    assert all(seq and min(seq) > EOS_ID for seq in ids)  # bare pieces: no specials, no unk here
    assert joint.decode_src(ids) == SRC[:50]
    assert joint.decode_tgt(joint.encode_tgt(TGT[:50])) == TGT[:50]
    assert joint.encode_src([]) == [] and joint.decode_tgt([]) == []
    assert joint.encode_src([""]) == [[]] and joint.decode_tgt([[]]) == [""]


def test_decode_drops_specials_and_accepts_arrays(joint):
    (ids,) = joint.encode_tgt([TGT[0]])
    padded = [BOS_ID] + ids + [EOS_ID, PAD_ID, PAD_ID]
    assert joint.decode_tgt([padded, np.array(padded, dtype=np.int32)]) == [TGT[0], TGT[0]]
    torch = pytest.importorskip("torch")
    assert joint.decode_tgt(torch.tensor([padded])) == [TGT[0]]


def test_decode_out_of_range(joint):
    with pytest.raises(TokenizerError, match="outside the target vocabulary"):
        joint.decode_tgt([[5, 80]])
    with pytest.raises(TokenizerError, match="sequence 1"):
        joint.decode_src([[5], [-1]])


def test_encode_rejects_a_bare_string(joint):
    with pytest.raises(TypeError):
        joint.encode_src("a sentence")


def test_state_dict_round_trip(joint, tmp_path):
    state = joint.state_dict()
    assert set(state) == {"src_model", "tgt_model"} and all(type(v) is bytes for v in state.values())
    again = Tokenizer.from_state_dict(state)
    assert again.joint and again.encode_src(SRC[:20]) == joint.encode_src(SRC[:20])
    copy = pickle.loads(pickle.dumps(joint))
    assert copy.decode_tgt(copy.encode_tgt(TGT[:5])) == TGT[:5]
    torch = pytest.importorskip("torch")
    torch.save({"tokenizer": state}, tmp_path / "t.pt")
    loaded = torch.load(tmp_path / "t.pt", weights_only=True)["tokenizer"]
    assert Tokenizer.from_state_dict(loaded).encode_tgt(TGT[:5]) == joint.encode_tgt(TGT[:5])
    with pytest.raises(TokenizerError, match="tgt_model"):
        Tokenizer.from_state_dict({"src_model": state["src_model"]})


def test_joint_vs_separate():
    cfg = TokenizerConfig(vocab_size=60, byte_fallback=False, joint=False)
    src_model, tgt_model = train_sentencepiece(SRC, cfg), train_sentencepiece(TGT, cfg)
    tok = Tokenizer(src_model, tgt_model)
    assert not tok.joint and src_model != tgt_model
    assert tok.src_vocab_size == tok.tgt_vocab_size == 60
    assert tok.decode_src(tok.encode_src(SRC[:30])) == SRC[:30]
    assert tok.decode_tgt(tok.encode_tgt(TGT[:30])) == TGT[:30]
    # Each model only knows its own side: a source word is pieces of the source model only.
    src_pieces = set(tok.src_pieces(range(tok.src_vocab_size)))
    tgt_pieces = set(tok.tgt_pieces(range(tok.tgt_vocab_size)))
    assert "▁house" in src_pieces and "▁esuoh" in tgt_pieces
    assert "▁esuoh" not in src_pieces and "▁house" not in tgt_pieces


def test_training_is_deterministic_and_samples():
    cfg = TokenizerConfig(vocab_size=40, byte_fallback=False, max_sentences=50, seed=3)
    assert train_sentencepiece(SRC, cfg) == train_sentencepiece(SRC, cfg)
    other_seed = TokenizerConfig(vocab_size=40, byte_fallback=False, max_sentences=50, seed=4)
    assert train_sentencepiece(SRC, cfg) != train_sentencepiece(SRC, other_seed)
    unigram = TokenizerConfig(model_type="unigram", vocab_size=40, byte_fallback=False)
    tok = Tokenizer(*[train_sentencepiece(SRC, unigram)] * 2)
    assert tok.decode_src(tok.encode_src(SRC[:10])) == SRC[:10]


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_vocab_too_large_message(model_type):
    cfg = TokenizerConfig(model_type=model_type, vocab_size=5000, byte_fallback=False)
    with pytest.raises(TokenizerError) as e:
        train_sentencepiece(SRC[:100], cfg, label="joint de+en")
    msg = str(e.value)
    assert "data.tokenizer.vocab_size" in msg and "5000" in msg and "joint de+en" in msg
    assert "Traceback" not in msg and "trainer_interface" not in msg
    limit = int(re.search(r"at most (\d+)", msg).group(1))
    assert 8 < limit < 5000
    if model_type == "bpe":  # bpe's reported maximum is exact
        train_sentencepiece(SRC[:100], TokenizerConfig(vocab_size=limit, byte_fallback=False))


def test_byte_fallback_needs_room_message():
    with pytest.raises(TokenizerError) as e:
        train_sentencepiece(SRC, TokenizerConfig(vocab_size=100, byte_fallback=True))
    msg = str(e.value)
    chars = len(set("".join(SRC)))  # letters, and the space as "▁"
    needed = 4 + 256 + chars
    assert "is 100" in msg and f"at least {needed}" in msg and "256 byte-fallback" in msg
    assert "data.tokenizer.byte_fallback=false" in msg
    with pytest.raises(TokenizerError, match=r"vocab_size' is 10, .* needs at least \d+ \(4 special pieces"):
        train_sentencepiece(SRC, TokenizerConfig(vocab_size=10, byte_fallback=False))


def test_no_training_text():
    with pytest.raises(TokenizerError, match="no non-empty"):
        train_sentencepiece(["", "  "], TokenizerConfig())


def test_special_ids_asserted():
    # sentencepiece's defaults: unk=0, bos=1, eos=2, no pad.
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SRC), model_writer=writer, vocab_size=40,
                                   minloglevel=2)
    default = writer.getvalue()
    with pytest.raises(TokenizerError, match="wrong special pieces.*pad_id=0 unk_id=1 bos_id=2 eos_id=3"):
        Tokenizer(default, default)
    good = train_sentencepiece(SRC, TokenizerConfig(vocab_size=40, byte_fallback=False))
    with pytest.raises(TokenizerError, match="target sentencepiece model has the wrong special pieces"):
        Tokenizer(good, default)
    with pytest.raises(TokenizerError, match="not a valid sentencepiece model"):
        Tokenizer(b"garbage", b"garbage")


def test_byte_fallback_has_no_unk(byte_tok):
    ids = byte_tok.encode_src(["Zwölf Boxkämpfer 🥊 jagen Viktor quer über den 大 Sylter Deich"])
    assert UNK_ID not in ids[0]
    assert byte_tok.decode_src(ids) == ["Zwölf Boxkämpfer 🥊 jagen Viktor quer über den 大 Sylter Deich"]


def test_real_multi30k_encodes_and_decodes_back(multi30k_dir):
    """The whole German training side round-trips. (Its speed is a figure of scripts/bench/data.py,
    not an assertion here: wall-clock limits fail at random on a busy machine.)"""
    import gzip

    lines = gzip.decompress((multi30k_dir / "train.de.gz").read_bytes()).decode().splitlines()
    model = train_sentencepiece(lines[:3000], TokenizerConfig(vocab_size=1000))
    tok = Tokenizer(model, model)
    ids = tok.encode_src(lines)
    assert len(ids) == 29000
    assert tok.decode_src(ids[:100]) == lines[:100]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.text(max_size=200), max_size=8))
def test_property_encode_decode_never_crashes(byte_tok, lines):
    lines = [clean_text(line).replace("\n", " ") for line in lines]  # what corpus.read_lines yields
    ids = byte_tok.encode_src(lines)
    assert len(ids) == len(lines)
    assert all(UNK_ID not in seq and PAD_ID not in seq for seq in ids)
    out = byte_tok.decode_tgt(ids)
    assert len(out) == len(lines) and all(isinstance(s, str) for s in out)
    raw = byte_tok.encode_tgt([str(s) for s in lines])  # unclean input must not crash either
    assert len(byte_tok.decode_src(raw)) == len(lines)
