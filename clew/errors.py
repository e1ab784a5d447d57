"""The one exception type for user mistakes: its message is a single line naming the culprit."""


class ClewError(Exception):
    """A mistake in the user's input (a file, a field, an argument), reported as one line."""
