"""Text: record sources, cleaning, the embedded multi-domain corpus, the held-out topic set, the Pile-like local
stand-in, and packing documents into BOS-first contexts with per-token provenance.

Owns everything that happens to text before a language model sees it. May import only the base layer
(`kit.config`, `kit.io`, `kit.distributed`); nothing here touches a model.
"""
from kit.corpus.attribution import attribution_notice
from kit.corpus.embedded import domains, embedded_chunks, token_counts
from kit.corpus.topics import TOPIC_MAPPING, TOPICS, topic_set

__all__ = ["TOPICS", "TOPIC_MAPPING", "attribution_notice", "domains", "embedded_chunks", "token_counts", "topic_set"]
