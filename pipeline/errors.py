"""Errors said to the user as one sentence (`featurize: error: ...`, exit 2). A module of its own so
that the CLI can catch them without importing the configuration's dependencies."""


class ConfigError(ValueError):
    """A configuration problem, phrased as one sentence for the user."""
