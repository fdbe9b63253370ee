"""Learning: the visible training loop (`trainer`), the learning-rate and sparsity schedules (`schedule`), and
atomic, verified, resumable checkpoints (`checkpoint`).

May import the base layer, `kit.corpus`, `kit.lm`, `kit.model` and `kit.collect`. The trainer never touches the
language model: anything with `get_batch_with_tokens()` feeds it.
"""
