"""Top-k sample collection: the on-device top-k buffers and interval reservoir (`collector`, `intervals`), the
frozen final pass and the samples table with provenance and re-scored windows (`final_pass`), and the one API that
reads samples (`samples`: select, latent_summary, topk_retention).

May import the base layer, `kit.corpus`, `kit.lm` and `kit.model`.
"""
