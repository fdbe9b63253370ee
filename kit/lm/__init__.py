"""The language model side: loading a model (`models`), its hook points per architecture family (`hooks`), the
stream of contexts each rank owns (`stream`), the activation store that reads (MLP input, MLP output) pairs
with an nnsight trace stopped after the layer (`store`), and the activation cache on disk: its format and
manifest (`cache`), its writer (`cache_writer`) and the store that reads it without the model (`cached_store`).

May import the base layer and `kit.corpus`.
"""
