"""Every exception pld raises on purpose, for all of its packages, in one place.

Each is a ``PldError`` whose message says what went wrong and what to do about it. Only the
CLI (``pld.cli``) turns them into exit codes; set ``PLD_TRACEBACK=1`` to see the traceback.
"""

__all__ = [
    "BaselineError",
    "BundleError",
    "ConfigError",
    "ContextOverflowError",
    "DataError",
    "DeadlineError",
    "DependencyError",
    "DistillError",
    "FleetError",
    "InputError",
    "MalformedReplyError",
    "ModelError",
    "ModelMismatchError",
    "ModelNotFoundError",
    "PldError",
    "PullLockedError",
    "RejectedError",
    "RunInterrupted",
    "SignatureError",
    "StoreError",
    "TeacherAuthError",
    "TeacherError",
    "TeacherUnreachableError",
]


class PldError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class ConfigError(PldError):
    """An option or setting is out of range, or an object was used before it was ready."""


class DependencyError(PldError):
    """An optional dependency (a pld extra) is not installed."""


class RunInterrupted(PldError):
    """The user stopped a long run (Ctrl-C); the message says how to resume it."""


# ---- models and bundles -------------------------------------------------------------------


class ModelError(PldError):
    """A model file could not be resolved, assembled, verified or loaded."""


class ModelNotFoundError(ModelError):
    """The model name is unknown, or its file is not available offline."""


class ModelMismatchError(ModelError):
    """The model file is not the one the bundle was validated with."""


class BundleError(PldError):
    """A bundle file is missing, malformed or fails validation."""


# ---- inputs and data ------------------------------------------------------------------------


class InputError(PldError):
    """A request cannot be classified as given (empty, invalid UTF-8, ...)."""


class ContextOverflowError(InputError):
    """A request does not fit in the model's context window."""


class DataError(PldError):
    """A dataset or records file is malformed."""


class BaselineError(PldError):
    """A baseline spec is malformed, or a few-shot baseline lacks its training examples."""


# ---- the distiller --------------------------------------------------------------------------


class DistillError(PldError):
    """A distillation run cannot go on as configured (no usable rule, no cluster, budget)."""


class TeacherError(PldError):
    """The teacher could not be configured, reached, or gave no usable reply."""


class TeacherUnreachableError(TeacherError):
    """Nothing answers at the teacher's base URL."""


class TeacherAuthError(TeacherError):
    """The teacher rejected the API key (HTTP 401 or 403)."""


class MalformedReplyError(TeacherError):
    """A reply holds no JSON object of the expected shape; ``text`` is the reply itself."""

    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text


# ---- bundle updates (pld.fleet) ------------------------------------------------------------


class FleetError(PldError):
    """Signing, publishing or pulling bundle updates failed; the active bundles are untouched."""


class SignatureError(FleetError):
    """A document or bundle has no valid signature from enough trusted keys (or a key is bad)."""


class RejectedError(FleetError):
    """A device refused an index or bundle: expired, older, another channel, wrong bytes, ..."""


class StoreError(FleetError):
    """A publication store (a directory or fsspec URL) cannot be read or written."""


class DeadlineError(StoreError):
    """A store did not answer within a pull's per-request or whole-pull deadline."""


class PullLockedError(FleetError):
    """Another pull is running on the same device directory."""
