"""Serving: an OpenAI-compatible HTTP API and a web page (:mod:`aigc.serve.app`), one generation thread
shared by all requests (:mod:`aigc.serve.scheduler`)."""
