"""BLEU of a translation checkpoint with and without a language model: shallow fusion at several weights,
and n-best reranking, on one split (default: Multi30k validation).

    python scripts/bench/lm_fusion.py --checkpoint tm.ckpt --lm lm.ckpt --weights 0,0.1,0.2,0.3 \
        --beam 1,5 --rerank-beam 5 --json fusion.json

Sources and references are the raw `{split}.{src}` / `{split}.{tgt}` files (plain or .gz) under --data
(default ../shared/data/multi30k); languages come from the checkpoint's config. Every row decodes the
whole split with `Translator` (the path of seq2seq-translate) and scores it with sacrebleu (cased and
lowercased BLEU, chrF); weight 0 is the plain model (its row equals no fusion, tested in tests/test_lm.py).
The LM must share the model's target vocabulary (train it with data.tokenizer_from=<tm.ckpt>).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import common
from seq2seq.checkpoint.loading import load_for_translation, load_language_model
from seq2seq.data.corpus import read_lines
from seq2seq.decoding.translator import Translator
from seq2seq.evaluation.metrics import score_corpus
from seq2seq.lm.fusion import ShallowFusion, check_vocabularies, rerank

REPO = common.REPO


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def find(folder: Path, stem: str) -> Path:
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    raise SystemExit(f"error: neither {folder / stem} nor {folder / stem}.gz exists")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="translation checkpoint")
    p.add_argument("--lm", required=True, help="language model checkpoint (same target vocabulary)")
    p.add_argument("--weights", type=floats, default=[0.0, 0.1, 0.2, 0.3], help="comma-separated fusion weights")
    p.add_argument("--beam", type=ints, default=[1], help="comma-separated beam sizes for fusion rows")
    p.add_argument("--rerank-beam", type=int, default=0, help="also rerank this beam's n-best list (0 = no)")
    p.add_argument("--data", default=str(REPO.parent / "shared/data/multi30k"), help="folder of the split files")
    p.add_argument("--split", default="val")
    p.add_argument("--max-sentences", type=int, default=0, help="only the first N sentences (0 = all)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tokenizer, search_cfg, config = load_for_translation(args.checkpoint)
    lm, lm_tokenizer, _ = load_language_model(args.lm)
    check_vocabularies(tokenizer, lm_tokenizer, args.checkpoint, args.lm)
    src_lang, tgt_lang = config["data"]["src_lang"], config["data"]["tgt_lang"]
    sources = read_lines(find(Path(args.data), f"{args.split}.{src_lang}"))
    refs = read_lines(find(Path(args.data), f"{args.split}.{tgt_lang}"))
    if args.max_sentences:
        sources, refs = sources[:args.max_sentences], refs[:args.max_sentences]
    print(f"{args.split} {src_lang}->{tgt_lang}: {len(sources)} sentences; model {args.checkpoint}; LM {args.lm}")

    rows = []

    def record(method: str, beam: int, weight: float, hyps: list[str], seconds: float) -> None:
        cased, lower = score_corpus(hyps, [refs]), score_corpus(hyps, [refs], lowercase=True)
        rows.append({"method": method, "beam": beam, "weight": weight, "bleu": round(cased["bleu"], 2),
                     "bleu_lc": round(lower["bleu"], 2), "chrf": round(cased["chrf"], 2),
                     "seconds": round(seconds, 1), "signature": cased["signature"]["bleu"]})
        r = rows[-1]
        print(f"{method:7s} beam {beam:2d} weight {weight:4.2f}: BLEU {r['bleu']:6.2f}  lc {r['bleu_lc']:6.2f}  "
              f"chrF {r['chrf']:6.2f}  ({r['seconds']} s)", flush=True)

    for beam in args.beam:
        for weight in args.weights:
            search_cfg.beam_size = beam
            wrapped = ShallowFusion(model, lm, weight) if weight else model
            start = time.perf_counter()
            hyps = [t.text for t in Translator(wrapped, tokenizer, search_cfg).translate(sources)]
            record("plain" if not weight else "fusion", beam, weight, hyps, time.perf_counter() - start)
    if args.rerank_beam:
        search_cfg.beam_size = args.rerank_beam
        start = time.perf_counter()
        nbest = Translator(model, tokenizer, search_cfg).translate(sources, nbest=args.rerank_beam)
        searched = time.perf_counter() - start
        for weight in args.weights:
            t0 = time.perf_counter()
            hyps = [t.text for t in rerank(nbest, lm, tokenizer, weight, search_cfg.length_penalty, "cpu")]
            record("rerank", args.rerank_beam, weight, hyps, searched + time.perf_counter() - t0)
    if args.json:
        common.write_json(args.json, {"environment": common.environment(torch.device("cpu")), "rows": rows}, quiet=True)


if __name__ == "__main__":
    main()
