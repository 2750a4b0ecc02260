"""The one exception type for bad user input: the CLI prints its first line and exits 2; anything else is a bug and
keeps its traceback."""


class ConfigError(ValueError):
    """A configuration, data file or argument the user gave is invalid; the message names the field or file."""
