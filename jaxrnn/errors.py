"""The one exception type a user is meant to see: the CLI prints it as one line and exits 2."""


class JaxrnnError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""


class DataError(JaxrnnError):
    """The corpus cannot be found, read or cut into windows."""


class ConfigError(JaxrnnError):
    """A setting is out of range or two settings conflict."""


class CheckpointError(JaxrnnError):
    """A checkpoint is missing, unreadable, or belongs to another model."""
