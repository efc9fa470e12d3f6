"""pld.runtime: the lean, on-device half. Loads a bundle and a GGUF model, evaluates the bundle's
system prompt once, and classifies requests by scoring only the bundle's labels.

Importing this package loads nothing heavy; llama.cpp is imported when a model is opened.
"""

from .bundle import Bundle, Instruction, Label, Student, Task, load_bundle, save_bundle
from .classifier import Classifier, Prediction, Timings
from .store import resolve_bundle_path, shipped_bundles

__all__ = [
    "Bundle",
    "Classifier",
    "Instruction",
    "Label",
    "Prediction",
    "Student",
    "Task",
    "Timings",
    "load_bundle",
    "resolve_bundle_path",
    "save_bundle",
    "shipped_bundles",
]
