"""Typed user-facing errors. Only `cli.py` turns them into messages and exit codes."""


class HiggsTrainError(Exception):
    """A problem the user can fix; its message is one sentence naming the place, the value and the fix."""

    exit_code = 2


class ConfigError(HiggsTrainError):
    """A bad flag, YAML preset or combination of settings."""


class ManifestError(HiggsTrainError):
    """A manifest that cannot be read, or a row in it that cannot be trained on.

    `reason` is the short category used in the data report (e.g. "missing field", "undecodable audio").
    """

    def __init__(self, message: str, reason: str = "invalid row"):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # keep the reason when the error crosses processes
        return (type(self), (str(self), self.reason))


class AudioError(ManifestError):
    """An audio file that is missing, unreadable or empty."""


class OutputDirError(HiggsTrainError):
    """An output folder that cannot be written, or lacks space."""


class CheckpointError(HiggsTrainError):
    """A checkpoint that cannot be written, verified or resumed from."""

    exit_code = 3


class ModelError(HiggsTrainError):
    """A model folder or hub id that cannot be loaded."""


class DivergedError(HiggsTrainError):
    """The loss or gradient norm stopped being finite: the step was neither applied nor saved."""

    exit_code = 5


class PeerError(HiggsTrainError):
    """Another process of a multi-process run stopped answering or died; the published checkpoints are intact."""

    exit_code = 4


class Interrupted(HiggsTrainError):
    """SIGTERM or SIGINT: the run saved at the current step and stopped; rerun the command to resume."""

    exit_code = 130
