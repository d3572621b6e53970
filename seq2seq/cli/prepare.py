"""`seq2seq-prepare`: build (or confirm) the prepared-corpus cache of the configured data section (the
config of `seq2seq-train`), so that training starts from it. Also `python -m seq2seq.cli.prepare [overrides]`.

The cache itself is `seq2seq.data.cache`; `data.tokenizer_from` (a checkpoint lending its sentencepiece
models) is loaded here, by `seq2seq.checkpoint.init_from`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from seq2seq.cli.hydra_help import app_help, wants_quick_help
from seq2seq.config import CONF_DIR, ConfigError, DataConfig, run_hydra_app, section
from seq2seq.data.corpus import CorpusError
from seq2seq.data.tokenizer import TokenizerError

# The cache and the checkpoint code (numpy, torch) are imported inside the functions that use them: Hydra
# answers `--help` (and rejects a bad override) before calling the task function, without paying for them.
if TYPE_CHECKING:
    from seq2seq.data.cache import PreparedCorpus


def prepare(cfg: DictConfig) -> PreparedCorpus:
    """Prepare from a composed Hydra config (uses its `data` section only). Raises CorpusError,
    TokenizerError, ConfigError, or CheckpointError (`data.tokenizer_from` names no usable checkpoint)."""
    from seq2seq.checkpoint.init_from import checkpoint_tokenizer
    from seq2seq.data.cache import prepare_corpus

    data = section(DataConfig, cfg.data, "data")
    tokenizer = checkpoint_tokenizer(Path(data.tokenizer_from).expanduser(), data) if data.tokenizer_from else None
    return prepare_corpus(data, tokenizer)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    """`seq2seq-prepare [overrides]`: build (or confirm) the cache for the configured data section."""
    from seq2seq.checkpoint.format import CheckpointError
    from seq2seq.data.cache import SPLITS

    try:
        corpus = prepare(cfg)
    except (CorpusError, TokenizerError, ConfigError, CheckpointError) as e:
        # A user mistake, not a bug: the message says what to change; a traceback would bury it.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    counts = ", ".join(f"{s} {len(corpus.splits[s])}" for s in SPLITS)
    print(f"prepared {counts} pairs in {corpus.directory}")


def main() -> None:
    """`seq2seq-prepare`: a bare --help is answered from conf/ (seq2seq.cli.hydra_help), the rest by Hydra."""
    if wants_quick_help(sys.argv[1:]):
        print(app_help("seq2seq-prepare", "build (or confirm) the prepared-corpus cache of the configured "
                       "data section (seq2seq-train's config).", "experiment=quickstart", CONF_DIR))
        return
    # The run folder (outputs/<task_name>/<time>, conf/hydra/default.yaml) is named after this step,
    # not after training, unless the user names it.
    if not any(arg.lstrip("+").startswith("task_name=") for arg in sys.argv[1:]):
        sys.argv.append("task_name=prepare")
    run_hydra_app(hydra_main)


if __name__ == "__main__":
    main()
