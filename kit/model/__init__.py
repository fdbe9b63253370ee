"""The transcoder: its config, encoder and decoder, activations (ReLU, TopK with a sparse backward, BatchTopK,
JumpReLU), losses, and weight I/O (safetensors, and Gemma Scope's published parameters).

May import only the base layer: a transcoder knows nothing of language models or text.
"""
