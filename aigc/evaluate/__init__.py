"""Evaluation: held-out perplexity and bits per character, diversity, FD/KID/precision-recall in a
named feature space, pass@k of code in a sandbox.

Evaluate layer: knows prepared data and loaded models (as their generation wrappers), and
runs generated code only in a separate sandboxed process; knows nothing of training loops,
the server or the CLI.
"""
