"""Typed errors. The library raises these; only the CLI turns them into a red line and an exit code."""


class MedtuneError(Exception):
    """An expected failure with a message the user can act on."""


class ConfigError(MedtuneError):
    """The run configuration is invalid (unknown key, wrong type, impossible value)."""


class DataError(MedtuneError):
    """The dataset cannot be used (missing file, bad record under the `error` policy, nothing left)."""


class ModelError(MedtuneError):
    """A model or tokenizer cannot be loaded or lacks something a stage needs."""


class ArtifactError(MedtuneError):
    """An earlier stage's artifact is missing, incomplete or fails verification."""


class TrainingError(MedtuneError):
    """Training cannot go on (a diverged update: a gradient of nan or inf)."""


class ToolError(MedtuneError):
    """An external tool (llama.cpp converter, quantizer, runtime) is missing or failed."""
