"""The few exception types pld raises on purpose.

Every message says what went wrong and what to do about it. Only ``pld.cli`` turns them
into exit codes; set ``PLD_TRACEBACK=1`` to see the traceback instead.
"""

__all__ = [
    "BundleError",
    "ContextOverflowError",
    "DataError",
    "InputError",
    "ModelError",
    "ModelMismatchError",
    "ModelNotFoundError",
    "PldError",
]


class PldError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class ModelError(PldError):
    """A model file could not be resolved, assembled, verified or loaded."""


class ModelNotFoundError(ModelError):
    """The model name is unknown, or its file is not available offline."""


class ModelMismatchError(ModelError):
    """The model file is not the one the bundle was validated with."""


class BundleError(PldError):
    """A bundle file is missing, malformed or fails validation."""


class InputError(PldError):
    """A request cannot be classified as given (empty, invalid UTF-8, ...)."""


class ContextOverflowError(InputError):
    """A request does not fit in the model's context window."""


class DataError(PldError):
    """A dataset or records file is malformed."""
