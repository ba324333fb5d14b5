"""User-facing errors. Each one prints as a single line that says what was wrong and what is accepted."""


class HarnessError(Exception):
    """Base class: the CLI prints these as one line and exits with status 2, without a traceback."""


class UnknownNameError(HarnessError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataError(HarnessError):
    """Missing, truncated or corrupt data."""


class TrainingDiverged(HarnessError):
    """The loss became NaN or infinite."""


class StreamingUnsupported(HarnessError):
    """The model cannot carry state across segments."""
