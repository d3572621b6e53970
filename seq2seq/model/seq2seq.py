"""`Seq2Seq`: encoder + bridge + attentive decoder behind the decoder-step contract (docs/design.md).

Shapes: B batch, N search rows, S source length, T target length, V target vocabulary.

Initialisation (`reset_parameters`): recurrent and linear layers keep PyTorch's fan-in scaled uniform
defaults (U(±1/sqrt(fan_in)) and Kaiming-uniform), which keep pre-activations at a width-independent
scale; embeddings are N(0, E^-0.5) with a zero padding row (see `embeddings.py`), which is also the
right scale for a tied output projection; the output bias starts at zero.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..config import ConfigError, ModelConfig, check_section
from .decoder import Bridge, Decoder, DecoderState
from .embeddings import TokenEmbedding
from .encoder import Encoder


class Seq2Seq(nn.Module):
    """Attentive RNN encoder-decoder.

    `state` (a `DecoderState`) is opaque to search: it is built by `init_state`, advanced by `step`
    and reordered by `reorder_state`.
    """

    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, pad_id: int, bos_id: int,
                 eos_id: int) -> None:
        super().__init__()
        check_section(cfg, "model")  # a hand-built config gets the same errors as a composed one
        self.pad_id = pad_id
        self.tgt_vocab_size = tgt_vocab_size  # Ensemble checks that its members agree
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.decoder_layers = cfg.decoder_layers
        self.decoder_hidden_size = cfg.decoder_hidden_size
        self.is_lstm = cfg.cell == "lstm"

        self.encoder = Encoder(vocab_size=src_vocab_size, embedding_size=cfg.embedding_size,
                               hidden_size=cfg.encoder_hidden_size, num_layers=cfg.encoder_layers, cell=cfg.cell,
                               bidirectional=cfg.bidirectional, dropout=cfg.dropout, rnn_dropout=cfg.rnn_dropout,
                               word_dropout=cfg.word_dropout, pad_id=pad_id)
        self.bridge = (Bridge(encoder_size=self.encoder.output_size, hidden_size=cfg.decoder_hidden_size,
                              num_layers=cfg.decoder_layers, is_lstm=self.is_lstm)
                       if cfg.bridge else None)
        self.decoder = Decoder(vocab_size=tgt_vocab_size, embedding_size=cfg.embedding_size,
                               hidden_size=cfg.decoder_hidden_size, num_layers=cfg.decoder_layers, cell=cfg.cell,
                               attention=cfg.attention, memory_size=self.encoder.output_size,
                               attention_size=cfg.attention_size, input_feed=cfg.input_feed, dropout=cfg.dropout,
                               rnn_dropout=cfg.rnn_dropout, word_dropout=cfg.word_dropout,
                               tie_embeddings=cfg.tie_embeddings, pad_id=pad_id)
        if cfg.share_embeddings:
            if src_vocab_size != tgt_vocab_size:
                raise ConfigError(f"config key 'model.share_embeddings' is true but the source and target "
                                  f"vocabularies differ ({src_vocab_size} vs {tgt_vocab_size} pieces); it needs "
                                  "a joint vocabulary (data.tokenizer.joint=true)")
            # One module, so one Parameter: the source embedding IS the target embedding (and, with
            # tie_embeddings, the output projection too). A joint vocabulary gives a piece one id on
            # both sides, so a word seen only as a source learns something for the target side.
            self.encoder.embedding = self.decoder.embedding
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch defaults for RNN/linear layers, then N(0, E^-0.5) embeddings, zero output bias.

        Embeddings go last: with tied embeddings the output projection's weight IS the target
        embedding, and the linear reset must not leave its Kaiming init there.
        """
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.RNNBase)):
                module.reset_parameters()
        for module in self.modules():
            if isinstance(module, TokenEmbedding):
                module.reset_parameters()
        nn.init.zeros_(self.decoder.output.proj.bias)

    def flatten_parameters(self) -> None:
        """Lay each RNN's weights out in one contiguous cuDNN buffer (a no-op off CUDA).

        Call it once after the parameters have moved or been wrapped (fit start), never per forward:
        each call re-allocates and copies every recurrent weight. `.to()` already does it.
        """
        for module in self.modules():
            if isinstance(module, nn.RNNBase):
                module.flatten_parameters()

    # ------------------------------------------------------------------ contract
    def forward(self, src: Tensor, src_lengths: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """src [B, S], src_lengths [B] CPU int64, src_mask [B, S] bool, tgt_in [B, T] -> logits [B, T, V].

        Raw logits in the compute dtype; the caller takes log_softmax in float32.
        """
        state = self.init_state(src, src_lengths, src_mask)  # hidden [L, B, H], keys [B, S, K]
        return self.decoder(tgt_in, state)  # [B, T, V]

    def init_state(self, src: Tensor, src_lengths: Tensor, src_mask: Tensor) -> DecoderState:
        """Encode, bridge, and precompute the attention keys: the state before the first step."""
        memory, final_hidden, final_cell = self.encoder(src, src_lengths)  # [B, S, M], [B, M], [B, M]
        if self.bridge is not None:
            hidden, cell = self.bridge(final_hidden, final_cell)  # [L, B, H] each (cell: LSTM only)
        else:
            hidden = memory.new_zeros(self.decoder_layers, src.size(0),
                                      self.decoder_hidden_size)  # [L, B, H]
            cell = hidden.clone() if self.is_lstm else None  # [L, B, H]
        return self.decoder.init_state(memory, src_mask, hidden, cell)

    def step(self, prev_tokens: Tensor,
             state: DecoderState) -> tuple[Tensor, DecoderState, Tensor | None]:
        """prev_tokens [N] -> (log_probs [N, V] float32, new state, attention [N, S] float32 | None)."""
        return self.decoder.step(prev_tokens, state)

    def reorder_state(self, state: DecoderState, rows: Tensor, *, sources: Tensor | None) -> DecoderState:
        """rows [N'] (new row i is old row rows[i]), sources [G'] or None (unchanged): the reordered state.

        The two halves of fairseq's reorder (incremental state, encoder output) in one call, so the
        state is never half-reordered; see `DecoderState.reorder` and docs/design.md.
        """
        return state.reorder(rows, sources)
