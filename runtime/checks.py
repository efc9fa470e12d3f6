"""The refusals a classifier makes before any work: input that is not non-empty UTF-8 text, and
a model file that is not the one the bundle was validated with. Pure functions over text, a
bundle and a resolved model file; they load nothing.
"""

from __future__ import annotations

import pld.models as models
from pld.errors import InputError

from .bundle import Bundle

__all__ = ["check_text", "mismatch_message"]


def check_text(text: str | bytes) -> str:
    """``text`` as a str, or ``InputError`` if it is not non-empty, valid UTF-8 text."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"input is not valid UTF-8 (byte {text[exc.start]:#04x} at offset {exc.start}); "
                "decode it with the right encoding before classifying"
            ) from None
    if not isinstance(text, str):
        raise InputError(f"input must be str or bytes, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"input is not valid UTF-8 text (unpaired surrogate at offset {exc.start}); "
            "decode the source bytes with errors='replace' or fix the input"
        ) from None
    if not text.strip():
        raise InputError("input is empty; pass the text to classify")
    return text


def mismatch_message(bundle: Bundle, resolved: models.ResolvedModel) -> str | None:
    """Why ``resolved`` is not the model file ``bundle`` was validated with, or None if it is."""
    expected = bundle.student.sha256
    if not expected or resolved.sha256 == expected:
        return None
    return (
        f"model file {resolved.path} (sha256 {resolved.sha256[:12]}...) is not the one "
        f"bundle '{bundle.name}' was validated with ({bundle.student.model}, sha256 "
        f"{expected[:12]}...); use that model, or pass allow_model_mismatch=True / "
        "--allow-model-mismatch to run it anyway"
    )
