"""Generation: the engine (token ids in and out, KV cache, continuous batching), the samplers, and
the loaded-model wrappers that turn strings into prompts and tokens into text or images.

Generate layer: the engine knows token ids and numeric settings, nothing of tokenization;
the wrappers (:mod:`aigc.generate.text`, :mod:`aigc.generate.images`) know tokenizers, chat
templates and model folders; nothing here knows training, evaluation or HTTP.
"""
