"""Reading a trained transcoder: held-out metrics and the spliced evaluation (`evaluate`), per-document statistics
and domain specialization with its nulls (`unit_stats`, `analysis`), text patterns and the logit lens
(`patterns`), and the saved `Interpretation` of a run (`interpretation`).

May import everything below it: the base layer, `kit.corpus`, `kit.lm`, `kit.model`, `kit.collect`, `kit.train`.
"""
