"""The language model side: loading a model (`models`), its hook points per architecture family (`hooks`), the
stream of contexts each rank owns (`stream`), and the activation store that reads (MLP input, MLP output) pairs
with an nnsight trace stopped after the layer (`store`).

May import the base layer and `kit.corpus`.
"""
