"""pld.runtime: the lean, on-device half. Loads a bundle and a GGUF model, evaluates the bundle's
system prompt once, and classifies requests by scoring only the bundle's labels.

Importing this package loads nothing heavy; llama.cpp is imported when a model is opened.
"""

from .audit import render_audit
from .bundle import (
    Bundle,
    Instruction,
    Label,
    Metrics,
    RuntimeSettings,
    Student,
    Task,
    load_bundle,
    render_system_prompt,
    save_bundle,
)
from .calibration import CalibrationChoice, apply_prior, calibration_applies, choose_calibration
from .classifier import Classifier, Prediction, Timings
from .model import Model
from .options import ClassifierOptions
from .records import Record, read_records
from .store import device_bundle_path, resolve_bundle_path, shipped_bundles

__all__ = [
    "Bundle",
    "CalibrationChoice",
    "Classifier",
    "ClassifierOptions",
    "Instruction",
    "Label",
    "Metrics",
    "Model",
    "Prediction",
    "Record",
    "RuntimeSettings",
    "Student",
    "Task",
    "Timings",
    "apply_prior",
    "calibration_applies",
    "choose_calibration",
    "device_bundle_path",
    "load_bundle",
    "read_records",
    "render_audit",
    "render_system_prompt",
    "resolve_bundle_path",
    "save_bundle",
    "shipped_bundles",
]
