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
    RuleEffect,
    RuntimeSettings,
    Student,
    Task,
    load_bundle,
    parse_bundle,
    render_system_prompt,
    save_bundle,
)
from .calibration import (
    Calibration,
    CalibrationChoice,
    apply_prior,
    calibration_applies,
    choose_calibration,
    fit_prior,
)
from .classifier import Classifier
from .model import Model, quiet_llama
from .options import DEVICE_STATES_KEPT, ClassifierOptions
from .prediction import Prediction, Timings
from .records import Record, read_records
from .store import device_bundle_path, device_run_settings, resolve_bundle_path, shipped_bundles

__all__ = [
    "DEVICE_STATES_KEPT",
    "Bundle",
    "Calibration",
    "CalibrationChoice",
    "Classifier",
    "ClassifierOptions",
    "Instruction",
    "Label",
    "Metrics",
    "Model",
    "Prediction",
    "Record",
    "RuleEffect",
    "RuntimeSettings",
    "Student",
    "Task",
    "Timings",
    "apply_prior",
    "calibration_applies",
    "choose_calibration",
    "fit_prior",
    "device_bundle_path",
    "device_run_settings",
    "load_bundle",
    "parse_bundle",
    "quiet_llama",
    "read_records",
    "render_audit",
    "render_system_prompt",
    "resolve_bundle_path",
    "save_bundle",
    "shipped_bundles",
]
