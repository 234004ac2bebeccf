"""Serving: an OpenAI-compatible HTTP API and a web page (:mod:`aigc.serve.app`), one generation thread
shared by all requests (:mod:`aigc.serve.scheduler`).

Serve layer: HTTP in front of loaded models; knows requests, limits and the generation wrappers
(:mod:`aigc.generate`), never training, config files or the CLI.
"""
