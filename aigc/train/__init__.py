"""Training: the one loop, the tasks that tell it about a kind of data, the objectives, the loss plot.

Train layer: knows configs, prepared data, model folders, checkpoints, the generation
wrappers (for the samples written at each checkpoint) and the metrics of evaluate; never
imports the public API (:mod:`aigc.api`), the server or the CLI.
"""
