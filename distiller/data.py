"""Training data for the distiller: task definitions, labelled examples, stratified samples.

A task is the ``Task`` of the bundle format (name, description, labels with one-line
definitions, input format): the three benchmark tasks ship ready-made, any other comes from a
JSON or TOML file. Examples come from JSON Lines or CSV with a text and a label column. Knows
nothing about teachers or models.
"""

from __future__ import annotations

import csv
import hashlib
import random
import tomllib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import msgspec

from pld.errors import DataError
from pld.files import read_jsonl
from pld.runtime.bundle import Task, load_bundle
from pld.runtime.store import resolve_bundle_path, shipped_bundles

__all__ = [
    "Example",
    "Splits",
    "file_digest",
    "load_examples",
    "load_splits",
    "load_task",
    "stratified_sample",
]


class Example(msgspec.Struct, frozen=True, kw_only=True):
    """One labelled input."""

    id: str
    text: str
    label: str


def load_task(name_or_path: str | Path) -> Task:
    """A shipped task by name (``stereoset``, ``contractnli``, ``logiqa``) or a task file.

    A task file is JSON or TOML with ``name``, ``description``, ``labels`` (a list of
    ``{name, definition}``) and ``input_format``.
    """
    path = Path(name_or_path)
    if not path.exists():
        if str(name_or_path) in shipped_bundles():
            return load_bundle(resolve_bundle_path(str(name_or_path))).task
        raise DataError(
            f"no task file {str(name_or_path)!r} and no built-in task of that name; pass a JSON "
            f"or TOML task file or one of: {', '.join(shipped_bundles())}"
        )
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else msgspec.json.decode(raw)
        task = msgspec.convert(data, Task)
    except (OSError, UnicodeDecodeError, ValueError, msgspec.DecodeError) as exc:
        raise DataError(f"task file {path} cannot be read: {exc}") from None
    except msgspec.ValidationError as exc:
        raise DataError(
            f"task file {path} fails validation: {exc}; it needs 'name', 'description', "
            "'labels' (a list of {name, definition}) and 'input_format'"
        ) from None
    if len({label.name for label in task.labels}) != len(task.labels) or len(task.labels) < 2:
        raise DataError(f"task file {path}: 'labels' needs at least two distinct names")
    return task


def load_examples(
    path: str | Path,
    labels: Sequence[str],
    *,
    text_field: str = "text",
    label_field: str = "label",
    id_field: str = "id",
) -> list[Example]:
    """Read labelled examples from ``.jsonl`` or ``.csv``; every label must be one of ``labels``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist; check the path")
    rows: list[tuple[int, dict[str, object]]] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {text_field, label_field} - set(reader.fieldnames or [])
            if missing:
                raise DataError(
                    f"{path}: no column {sorted(missing)} (columns: {reader.fieldnames}); "
                    "name the columns with --text-field and --label-field"
                )
            rows = [(i, dict(row)) for i, row in enumerate(reader, 2)]
    else:
        rows = list(read_jsonl(path))
    known = set(labels)
    out = []
    for lineno, row in rows:
        text, label = row.get(text_field), row.get(label_field)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{lineno}: field {text_field!r} is missing or empty")
        if label is None or str(label) not in known:
            raise DataError(
                f"{path}:{lineno}: label {label!r} is not one of the task's labels {list(labels)}; "
                "fix the data or the task file (or name the column with --label-field)"
            )
        out.append(Example(id=str(row.get(id_field, lineno)), text=text, label=str(label)))
    if not out:
        raise DataError(f"{path} holds no examples")
    return out


def stratified_sample(
    examples: Sequence[Example], n: int | None, *, seed: int = 0
) -> list[Example]:
    """``n`` examples with the label proportions of the whole (largest remainders; every label
    kept when ``n`` allows), drawn with ``random.Random(seed)``, in the file's order.
    """
    if n is None or n >= len(examples):
        return list(examples)
    if n <= 0:
        raise DataError(f"--limit must be positive, got {n}")
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_label[ex.label].append(i)
    names = sorted(by_label)
    quota = {k: n * len(by_label[k]) / len(examples) for k in names}
    take = {k: int(quota[k]) for k in names}
    if n >= len(names):
        for k in names:
            take[k] = max(take[k], 1)
    while sum(take.values()) > n:  # the minimum of one per label overshot: trim the largest
        k = max(names, key=lambda k: (take[k], k))
        take[k] -= 1
    order = sorted(names, key=lambda k: (-(quota[k] - int(quota[k])), k))
    while sum(take.values()) < n:  # hand out the remainder, largest fractions first
        k = next(k for k in order if take[k] < len(by_label[k]))
        take[k] += 1
        order.remove(k)
        order.append(k)
    rng = random.Random(seed)
    chosen: list[int] = []
    for k in names:
        pool = list(by_label[k])
        rng.shuffle(pool)
        chosen += pool[: take[k]]
    return [examples[i] for i in sorted(chosen)]


class Splits(msgspec.Struct, frozen=True, kw_only=True):
    """A run's data: every record of each file, and the stratified samples the stages use."""

    task: Task
    train_all: list[Example]
    dev_all: list[Example]
    train: list[Example]  # extraction
    dev: list[Example]  # scoring every rule set
    loop: list[Example]  # the student's training errors in the conflict loop, from ``train``


def load_splits(
    task: str | Path,
    train: str | Path,
    dev: str | Path,
    *,
    limit: int | None,
    dev_limit: int | None,
    loop_limit: int | None,
    seed: int = 0,
    text_field: str = "text",
    label_field: str = "label",
) -> Splits:
    """Load a task and its two data files, and draw each stage's sample (``None``: all)."""
    spec = load_task(task)
    labels = [x.name for x in spec.labels]
    fields = {"text_field": text_field, "label_field": label_field}
    train_all = load_examples(train, labels, **fields)
    dev_all = load_examples(dev, labels, **fields)
    train_set = stratified_sample(train_all, limit, seed=seed)
    return Splits(
        task=spec, train_all=train_all, dev_all=dev_all, train=train_set,
        dev=stratified_sample(dev_all, dev_limit, seed=seed),
        loop=stratified_sample(train_set, loop_limit, seed=seed),
    )  # fmt: skip


def file_digest(path: str | Path) -> str:
    """``sha256:`` of a file's bytes, for provenance."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()
