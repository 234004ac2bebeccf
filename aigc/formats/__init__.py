"""Folders on disk: the model-folder format, LoRA adapters, Hugging Face folders in and out, checkpoints.

Formats layer: knows file layouts (safetensors, config.json, tokenizer.json,
generation_config.json, adapter_config.json, state.json) and turns them into models and
configs and back; knows nothing of training loops, sampling, evaluation or HTTP. Never
unpickles: weights are safetensors, everything else JSON.
"""
