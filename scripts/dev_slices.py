"""Cut a labelled dev split into two disjoint, stratified, seeded slices: one the distiller may
look at (``select``: its conflict loop keeps a revision only if Macro-F1 rises there) and one it
never sees (``heldout``: what results are reported on), so a reported gain is not selected on
the records it is measured on.

    python scripts/dev_slices.py ../shared/data/stereoset/dev.jsonl --select 96 --heldout 300 \
        --out runs/stereoset

A larger selection slice beside an existing held-out one (neither may share a record with it):

    python scripts/dev_slices.py ../shared/data/stereoset/dev.jsonl --select 240 \
        --exclude runs/stereoset/dev-heldout.jsonl --out runs/stereoset-240
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pld.distiller.data import Example, stratified_sample
from pld.files import atomic_write, read_jsonl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("split", type=Path, help="labelled JSON Lines (text, label)")
    ap.add_argument("--select", type=int, required=True, help="records the distiller may see")
    ap.add_argument("--heldout", type=int, default=0, help="records only results use")
    ap.add_argument(
        "--exclude",
        type=Path,
        action="append",
        default=[],
        help="JSON Lines whose records neither slice may take (an existing held-out slice)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    excluded = {str(row["id"]) for path in args.exclude for _, row in read_jsonl(path)}
    rows = [row for _, row in read_jsonl(args.split) if str(row["id"]) not in excluded]
    examples = [Example(id=str(r["id"]), text=r["text"], label=r["label"]) for r in rows]
    by_id = {str(r["id"]): r for r in rows}
    select = stratified_sample(examples, args.select, seed=args.seed)
    taken = {ex.id for ex in select}
    rest = [ex for ex in examples if ex.id not in taken]
    heldout = stratified_sample(rest, args.heldout, seed=args.seed + 1) if args.heldout else []
    assert not taken & {ex.id for ex in heldout}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in (("select", select), ("heldout", heldout)):
        if not part:
            continue
        lines = [json.dumps(by_id[ex.id], ensure_ascii=False) for ex in part]
        path = atomic_write(args.out / f"dev-{name}.jsonl", ("\n".join(lines) + "\n").encode())
        print(f"{path}: {len(part)} records")


if __name__ == "__main__":
    main()
