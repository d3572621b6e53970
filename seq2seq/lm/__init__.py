"""Language models: monolingual data, the LightningModule, perplexity, generation, and language models
inside translation (shallow fusion, n-best reranking).
"""
