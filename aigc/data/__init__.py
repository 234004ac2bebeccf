"""Data: corpora and image sources read, tokenizers built, token shards and image arrays prepared.

Data layer: knows files of text, code, conversations and images, tokenizers and the
``[data]`` configs; knows nothing of model weights, training, sampling or serving.
"""
