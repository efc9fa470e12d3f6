"""On-device acceptance checks: a few inputs with their expected labels and the accuracy the
bundle reached on them with its student where it was published; a device classifies them with
its own model file and backend before activation and refuses a bundle that does worse there.

A check set is a file of its own (``checks/<sha256>.json`` in the store), named with its length
and sha256 by the signed index entry of the bundle it checks, so the index's signature covers
it as it covers the bundle; the check set names the bundle's sha256 in turn. (It travels beside
the bundle, not inside it, so the bundle schema stays as it is.) Parsing and judging are pure;
``measure`` runs a classifier.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from pld.errors import DataError, RejectedError

if TYPE_CHECKING:
    from pld.runtime import Classifier

    from .index import CheckRef

__all__ = [
    "CheckCase",
    "CheckSet",
    "check_file_bytes",
    "check_set_bytes",
    "judge",
    "make_check_set",
    "measure",
    "parse_check_set",
    "pick_cases",
]

MAX_CASES = 1000
MAX_CHECK_BYTES = 4 << 20
DEFAULT_TOLERANCE = 0.05


class _Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class CheckCase(_Strict, frozen=True):
    """One input and the label it should get."""

    text: str
    label: str


class CheckSet(_Strict, frozen=True):
    """The inputs a device classifies before it activates ``bundle_sha256``, and the accuracy
    the bundle reached on them where it was published (``model_sha256``, ``backend``)."""

    type: Literal["pld-check-set"]
    task: str
    bundle_sha256: str
    model_sha256: str | None
    backend: str
    accuracy: float
    tolerance: float  # a device refuses below accuracy - tolerance
    cases: list[CheckCase]


def check_set_bytes(check: CheckSet) -> bytes:
    """A check set's file bytes (pretty JSON)."""
    return msgspec.json.format(msgspec.json.encode(check), indent=2) + b"\n"


def check_file_bytes(data: bytes, ref: CheckRef, task: str) -> None:
    """Refuse check-set bytes whose length, then sha256, differ from the index entry's."""
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != ref.length or digest != ref.sha256:
        raise RejectedError(
            f"the check set of task {task!r} ({ref.file}) has {len(data)} bytes and sha256 "
            f"{digest[:12]}..., the index says {ref.length} and {ref.sha256[:12]}...; refusing "
            "it (a tampered file)"
        )


def parse_check_set(data: bytes, task: str, bundle_sha256: str, labels: Sequence[str]) -> CheckSet:
    """Parse verified check-set bytes and refuse one for another task or bundle, or malformed."""
    try:
        check = msgspec.json.decode(data, type=CheckSet)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RejectedError(
            f"the acceptance check set of task {task!r} is malformed ({exc})"
        ) from None
    if check.task != task or check.bundle_sha256 != bundle_sha256:
        raise RejectedError(
            f"the acceptance check set named for task {task!r} is for task {check.task!r}, "
            f"bundle {check.bundle_sha256[:12]}...; refusing it (the publication is inconsistent)"
        )
    if not 0 <= check.accuracy <= 1 or not 0 <= check.tolerance <= 1:
        raise RejectedError(
            f"the acceptance check set of task {task!r} gives accuracy {check.accuracy} and "
            f"tolerance {check.tolerance}; both must be between 0 and 1"
        )
    if not 0 < len(check.cases) <= MAX_CASES:
        raise RejectedError(
            f"the acceptance check set of task {task!r} has {len(check.cases)} cases; give 1 to "
            f"{MAX_CASES}"
        )
    unknown = sorted({c.label for c in check.cases} - set(labels))
    if unknown:
        raise RejectedError(
            f"the acceptance check set of task {task!r} expects labels the bundle does not have: "
            f"{', '.join(unknown)}"
        )
    return check


def measure(clf: Classifier, check: CheckSet) -> float:
    """The accuracy ``clf`` reaches on the check set's cases."""
    preds = clf.classify_many([c.text for c in check.cases])
    return sum(p.label == c.label for p, c in zip(preds, check.cases)) / len(check.cases)


def judge(check: CheckSet, accuracy: float, version: str) -> None:
    """Refuse (``RejectedError``) when ``accuracy`` is below the recorded one minus tolerance."""
    floor = check.accuracy - check.tolerance
    if accuracy < floor - 1e-9:
        raise RejectedError(
            f"acceptance check failed for task {check.task!r}: bundle {version} reaches "
            f"{accuracy:.1%} on its {len(check.cases)} check inputs on this device, below the "
            f"{check.accuracy:.1%} recorded where it was published (backend {check.backend}) "
            f"minus {check.tolerance:.1%}; refusing to activate it (the active bundles are "
            "untouched). Check this device's model file and backend, or publish a bundle that "
            "passes here"
        )


def pick_cases(
    records: Iterable[tuple[int, dict[str, Any]]], n: int, where: str
) -> list[CheckCase]:
    """The ``n`` shortest of ``records`` (line number, ``{"text", "label"}``), taking each label's
    shortest in turn so every label is checked as evenly as the data allows; in file order.

    A device runs the check before every activation, and an input costs about its length in
    tokens (the prompt's prefix is reused), so the shortest inputs make the cheapest check that
    still covers the labels: on Contract-NLI's dev split they run about 2,400 characters against
    a median of 6,200."""
    by_label: dict[str, list[tuple[int, int, CheckCase]]] = {}
    for line, record in records:
        text, label = record.get("text"), record.get("label")
        if not isinstance(text, str) or not isinstance(label, str):
            raise DataError(f"{where}:{line}: a check record needs a string 'text' and 'label'")
        by_label.setdefault(label, []).append((len(text), line, CheckCase(text=text, label=label)))
    queues = [sorted(group, reverse=True) for _, group in sorted(by_label.items())]
    chosen: list[tuple[int, int, CheckCase]] = []
    while len(chosen) < n and any(queues):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop())
    return [case for _, _, case in sorted(chosen, key=lambda c: c[1])]


def make_check_set(
    bundle: str | Path,
    data: str | Path,
    *,
    n: int = 20,
    tolerance: float = DEFAULT_TOLERANCE,
    model: Any = None,
) -> bytes:
    """Classify ``n`` records of ``data`` (``{"text", "label"}`` JSON Lines; the shortest, labels
    in turn: ``pick_cases``) with the bundle's student and write down the accuracy reached: a
    check set's bytes."""
    from pld.files import read_jsonl
    from pld.runtime import Classifier, resolve_bundle_path

    if not 0 < n <= MAX_CASES:
        raise DataError(f"--check-n is {n}; give 1 to {MAX_CASES}")
    if not 0 <= tolerance <= 1:
        raise DataError(f"--check-tolerance is {tolerance}; give a fraction between 0 and 1")
    path = resolve_bundle_path(bundle)
    cases = pick_cases(read_jsonl(data), n, str(data))
    if not cases:
        raise DataError(f"{data} has no records")
    with Classifier.open(path, model=model) as clf:
        unknown = sorted({c.label for c in cases} - set(clf.labels))
        if unknown:
            raise DataError(f"{data} has labels the bundle does not have: {', '.join(unknown)}")
        draft = CheckSet(
            type="pld-check-set",
            task=clf.bundle.task.name,
            bundle_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            model_sha256=clf.bundle.student.sha256,
            backend=clf.backend,
            accuracy=0.0,
            tolerance=tolerance,
            cases=cases,
        )
        accuracy = measure(clf, draft)
    return check_set_bytes(msgspec.structs.replace(draft, accuracy=accuracy))
