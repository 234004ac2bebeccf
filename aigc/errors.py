"""The one exception type a user sees.

Every check on user input (files, config values, prompts, checkpoints) raises
:class:`AigcError` with a one-line message naming the file, field or value and
what was expected. The CLI prints ``error: <message>`` and exits with status 2;
Python API callers get the exception.
"""


class AigcError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def check_unicode(text: str, what: str = "text") -> None:
    """Raise :class:`AigcError` unless ``text`` is valid Unicode (encodable as UTF-8: no lone
    surrogate, which JSON's ``\\ud800`` or an undecodable command-line byte produces).

    The error names ``what`` and the character position."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise AigcError(f"{what}: invalid Unicode at character {e.start} (U+{ord(text[e.start]):04X}, a lone "
                        "surrogate; text must be valid UTF-8)") from None
