"""The one exception type a user sees.

Every check on user input (files, config values, prompts, checkpoints) raises
:class:`AigcError` with a one-line message naming the file, field or value and
what was expected. The CLI prints ``error: <message>`` and exits with status 2;
Python API callers get the exception.
"""


class AigcError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""
