"""The instruction bundle (``*.pld.json``): everything a device needs besides the model file.

Owns the schema (msgspec Structs, strict), loading and saving, the content digest, and the one
function that renders the student's system prompt from the task and the instructions. It knows
nothing about models, llama.cpp or the distiller.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from pld.errors import BundleError
from pld.files import atomic_write

__all__ = [
    "READABLE_VERSIONS",
    "SCHEMA_VERSION",
    "Bundle",
    "Instruction",
    "Label",
    "Metrics",
    "RuleEffect",
    "RuntimeSettings",
    "Student",
    "Task",
    "bundle_digest",
    "canonical_bytes",
    "file_bytes",
    "load_bundle",
    "render_system_prompt",
    "save_bundle",
    "schema_version_for",
]

# The newest schema this pld reads and writes. A file carries the lowest version that can hold
# its content (``schema_version_for``): 1 unless it has rule effects (2) or a fitted calibration
# (3), so a device on an older pld keeps reading every bundle that does not use them, and one
# that does fails with "upgrade pld" rather than with an unknown field.
SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)

_SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$")
_LABEL = re.compile(r"^\S(?:.*\S)?$")


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class Label(_Strict, frozen=True):
    """One answer the student may give, with a one-line definition."""

    name: str
    definition: str


class Task(_Strict, frozen=True):
    """What is classified: a description, the label space and what an input looks like."""

    name: str
    description: str
    labels: list[Label]
    input_format: str


class Instruction(_Strict, frozen=True):
    """One distilled rule and where it came from: the audit surface of a bundle."""

    id: str
    text: str
    support: int = 0
    cluster: int | None = None
    round: int = 0


class Student(_Strict, frozen=True):
    """The model the bundle was validated with, and what to do when a device runs another."""

    model: str
    sha256: str | None = None
    on_mismatch: Literal["error", "warn"] = "error"


class RuntimeSettings(_Strict, frozen=True):
    """How the runtime scores labels for this bundle (chosen from measurements on dev data)."""

    calibration: Literal["none", "contextual", "fitted"] = "none"
    content_free_inputs: list[str] = msgspec.field(default_factory=lambda: ["N/A", "", "[MASK]"])
    # schema_version 3: the prior a "fitted" calibration divides out, per label in the task's
    # order (fitted on labelled dev data for this prompt and student; see runtime.calibration)
    prior: list[float] | None = None


class RuleEffect(_Strict, frozen=True):
    """What removing one rule did (leave one out, ``pld bundle audit``): the change in Macro-F1
    with a paired bootstrap interval, and in accuracy, on ``n`` records. Negative: the rule helps.
    """

    index: int  # 1-based rule number when audited
    id: str
    delta_macro_f1: float
    ci_low: float
    ci_high: float
    delta_accuracy: float
    n: int


class Metrics(_Strict, frozen=True):
    """Validation results of the student with this bundle and zero-shot, and each rule's effect."""

    n: int
    macro_f1: float
    accuracy: float
    zero_shot_macro_f1: float | None = None
    zero_shot_accuracy: float | None = None
    split: str = "dev"
    rule_effects: list[RuleEffect] | None = None  # schema_version 2


class Bundle(_Strict, frozen=True):
    """A versioned, auditable system prompt for one task and one student model."""

    schema_version: int
    name: str
    version: str
    created_at: str
    task: Task
    instructions: list[Instruction]
    system_prompt: str
    student: Student
    runtime: RuntimeSettings = msgspec.field(default_factory=RuntimeSettings)
    provenance: dict[str, Any] = msgspec.field(default_factory=dict)
    metrics: Metrics | None = None
    digest: str | None = None

    @property
    def labels(self) -> list[str]:
        """The label names, in the task's order."""
        return [label.name for label in self.task.labels]

    @classmethod
    def create(
        cls,
        *,
        name: str,
        task: Task,
        instructions: list[Instruction] | None = None,
        student: Student,
        version: str = "0.1.0",
        runtime: RuntimeSettings | None = None,
        provenance: dict[str, Any] | None = None,
        metrics: Metrics | None = None,
        created_at: str | None = None,
    ) -> Bundle:
        """Build a bundle with its system prompt rendered and its digest computed."""
        instructions = list(instructions or [])
        draft = cls(
            schema_version=SCHEMA_VERSION,  # lowered to what the content needs below
            name=name,
            version=version,
            created_at=created_at or _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
            task=task,
            instructions=instructions,
            system_prompt=render_system_prompt(task, instructions),
            student=student,
            runtime=runtime or RuntimeSettings(),
            provenance=dict(provenance or {}),
            metrics=metrics,
        )
        draft = msgspec.structs.replace(draft, schema_version=schema_version_for(draft))
        validate(draft)
        return msgspec.structs.replace(draft, digest=bundle_digest(draft))


def schema_version_for(bundle: Bundle) -> int:
    """The lowest schema version that can hold ``bundle``: 3 with a fitted calibration, 2 with
    rule effects, else 1."""
    return max(_newer_fields(bundle).values(), default=1)


def _newer_fields(bundle: Bundle) -> dict[str, int]:
    """The fields newer than schema 1 that ``bundle`` uses, with the version each needs."""
    used = {}
    if bundle.metrics is not None and bundle.metrics.rule_effects is not None:
        used["'metrics.rule_effects'"] = 2
    if bundle.runtime.calibration == "fitted" or bundle.runtime.prior is not None:
        used["'runtime.calibration: fitted' / 'runtime.prior'"] = 3
    return used


def render_system_prompt(
    task: Task, instructions: list[Instruction], *, examples: Sequence[tuple[str, str]] = ()
) -> str:
    """Render the exact text the student sees: the single source of a bundle's system prompt.

    ``examples`` (text, label) pairs are for few-shot baselines; bundles never carry them, and
    without them the text is unchanged (bundle digests and the consistency check rely on it).
    """
    names = [label.name for label in task.labels]
    lines = [task.description.strip(), "", "Labels:"]
    lines += [f"- {label.name}: {label.definition.strip()}" for label in task.labels]
    lines += ["", f"Input format: {task.input_format.strip()}"]
    if instructions:
        lines += ["", "Rules:"]
        lines += [f"{i}. {ins.text.strip()}" for i, ins in enumerate(instructions, 1)]
    if examples:
        lines += ["", "Examples:"]
        for text, label in examples:
            lines += ["", text.strip(), f"Answer: {label}"]
    lines += ["", f"Answer with exactly one label ({', '.join(names)}) and nothing else."]
    return "\n".join(lines)


def canonical_bytes(bundle: Bundle) -> bytes:
    """The bundle's canonical bytes: compact JSON, sorted keys, the digest field left out.

    What the digest and a detached signature are computed over, whatever the file's layout.
    """
    raw = _builtins(bundle)
    raw.pop("digest", None)
    return msgspec.json.encode(raw, order="sorted")


def _builtins(bundle: Bundle) -> dict[str, Any]:
    """The bundle as JSON data. A field newer than schema 1 is left out while unset, so a bundle
    without it keeps the bytes and digest (and signature) it had, and a schema-1 pld reads it."""
    raw: dict[str, Any] = msgspec.to_builtins(bundle)
    metrics = raw.get("metrics")
    if metrics is not None and metrics.get("rule_effects") is None:
        del metrics["rule_effects"]
    if raw["runtime"].get("prior") is None:
        del raw["runtime"]["prior"]
    return raw


def bundle_digest(bundle: Bundle) -> str:
    """sha256 of the bundle's canonical bytes (``canonical_bytes``)."""
    return "sha256:" + hashlib.sha256(canonical_bytes(bundle)).hexdigest()


def validate(bundle: Bundle) -> None:
    """Check what the schema alone cannot: semver, unique labels, prompt consistency."""
    if bundle.schema_version not in READABLE_VERSIONS:
        raise BundleError(_version_message(bundle.schema_version))
    if bundle.schema_version < (needed := schema_version_for(bundle)):
        raise BundleError(
            f"bundle field {' and '.join(_newer_fields(bundle))} needs schema_version {needed}, but the bundle "
            f"says {bundle.schema_version}; re-save it with pld (save_bundle sets the version)"
        )
    rt = bundle.runtime
    if (rt.calibration == "fitted") != (rt.prior is not None):
        raise BundleError(
            "bundle field 'runtime.prior' goes with 'runtime.calibration: fitted' and only with "
            f"it (calibration is {rt.calibration!r}, prior is "
            f"{'set' if rt.prior is not None else 'missing'}); re-decide the calibration with pld"
        )
    if rt.prior is not None and (
        len(rt.prior) != len(bundle.task.labels)
        or not all(math.isfinite(x) and x > 0 for x in rt.prior)
    ):
        raise BundleError(
            f"bundle field 'runtime.prior' must hold one positive number per label "
            f"({len(bundle.task.labels)}), got {rt.prior}"
        )
    if not _SEMVER.match(bundle.version):
        raise BundleError(f"bundle field 'version' is {bundle.version!r}; use semver like '1.2.0'")
    if not bundle.name.strip():
        raise BundleError("bundle field 'name' is empty; give the bundle a name")
    names = [label.name for label in bundle.task.labels]
    if len(names) < 2:
        raise BundleError("bundle field 'task.labels' needs at least two labels")
    if len(set(names)) != len(names):
        raise BundleError(f"bundle field 'task.labels' has duplicate names: {names}")
    for name in names:
        if not _LABEL.match(name):
            raise BundleError(
                f"bundle field 'task.labels' has label {name!r}; "
                "labels must be non-empty with no leading or trailing whitespace"
            )
    ids = [ins.id for ins in bundle.instructions]
    if len(set(ids)) != len(ids):
        raise BundleError("bundle field 'instructions' has duplicate ids")
    expected = render_system_prompt(bundle.task, bundle.instructions)
    if bundle.system_prompt != expected:
        raise BundleError(
            "bundle field 'system_prompt' does not match the task and instructions; "
            "it was edited by hand: edit 'instructions' instead and re-save the bundle with pld"
        )


def _version_message(found: object) -> str:
    if isinstance(found, int) and found > SCHEMA_VERSION:
        return (
            f"bundle schema_version {found} is newer than this pld understands "
            f"({SCHEMA_VERSION}); upgrade pld: pip install -U pld"
        )
    return (
        f"bundle schema_version {found!r} is not supported (this pld reads "
        f"{', '.join(map(str, READABLE_VERSIONS))}); "
        "re-create the bundle with 'pld distill' or upgrade it with a pld that reads both"
    )


def load_bundle(path: str | Path, *, verify_digest: bool = True) -> Bundle:
    """Read and validate a bundle file; errors name the file, the field and the fix."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(
            f"bundle file {path} does not exist; pass a path or a shipped bundle name "
            "(see 'pld bundle list')"
        ) from None
    return parse_bundle(data, source=str(path), verify_digest=verify_digest)


def parse_bundle(data: bytes, *, source: str = "<bytes>", verify_digest: bool = True) -> Bundle:
    """Decode and validate bundle bytes."""
    try:
        header = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise BundleError(f"bundle {source} is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise BundleError(f"bundle {source} must be a JSON object")
    if header.get("schema_version") not in READABLE_VERSIONS:
        raise BundleError(f"bundle {source}: " + _version_message(header.get("schema_version")))
    try:
        bundle = msgspec.json.decode(data, type=Bundle)
    except msgspec.ValidationError as exc:
        raise BundleError(f"bundle {source} fails validation: {exc}") from None
    try:
        validate(bundle)
    except BundleError as exc:
        raise BundleError(f"bundle {source}: {exc}") from None
    if verify_digest and bundle.digest is not None and bundle.digest != bundle_digest(bundle):
        raise BundleError(
            f"bundle {source}: field 'digest' does not match the content; the file was changed "
            "after it was written; re-save it with pld or restore the original"
        )
    return bundle


def save_bundle(bundle: Bundle, path: str | Path) -> Path:
    """Write a bundle atomically, pretty-printed for human review, with its schema version
    (``schema_version_for``) and digest refreshed."""
    bundle = msgspec.structs.replace(bundle, schema_version=schema_version_for(bundle))
    validate(bundle)
    bundle = msgspec.structs.replace(bundle, digest=bundle_digest(bundle))
    return atomic_write(path, file_bytes(bundle))


def file_bytes(bundle: Bundle) -> bytes:
    """The bytes of a bundle file as ``save_bundle`` writes them (pretty-printed; fields newer
    than schema 1 left out while unset), for a bundle whose version and digest are set."""
    return msgspec.json.format(msgspec.json.encode(_builtins(bundle)), indent=2) + b"\n"
