"""Data: parallel text read, checked and cleaned (corpus), sentencepiece (tokenizer), the prepared
corpus cache (cache), token-budget batches (batching, subword_sampling), and the LightningDataModule.
"""
