"""The paper's protocol on a held-out slice, for one student: zero-shot, few-shot:K and the
distilled bundle, each with the calibration chosen for its own prompt on the distiller's dev
slice (never on the held-out records), Macro-F1 and accuracy with bootstrap intervals, and the
bundle's paired difference from each baseline. One model load serves every configuration.

    python scripts/heldout_study.py BUNDLE --heldout runs/stereoset/dev-heldout.jsonl \
        --select runs/stereoset/dev-select.jsonl --train ../shared/data/stereoset/train.jsonl \
        --json-out runs/stereoset/heldout.json

Prints a table, then one JSON line (also written to --json-out).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import msgspec

from pld.evals import evaluate_with_predictions
from pld.files import atomic_write
from pld.metrics import paired_bootstrap_delta
from pld.runtime import ClassifierOptions, Model, load_bundle, resolve_bundle_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+", help="bundles of one task and one student")
    ap.add_argument("--heldout", type=Path, required=True, help="labelled records to report on")
    ap.add_argument("--select", type=Path, required=True, help="labelled records to decide on")
    ap.add_argument("--train", type=Path, required=True, help="few-shot examples come from here")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    bundles = [load_bundle(resolve_bundle_path(b)) for b in args.bundles]
    bundle = bundles[0]
    opts = ClassifierOptions(n_threads=args.threads, prefix_cache=False)
    baselines = ["zero-shot", f"few-shot:{args.shots}"]
    runs = {}
    with Model.open(bundle.student.model) as model:
        for baseline in baselines:
            runs[baseline] = evaluate_with_predictions(
                bundle, args.heldout, opts, model=model, baseline=baseline, train=args.train,
                calibration_data=args.select,
            )  # fmt: skip
        for name, b in zip(args.bundles, bundles, strict=True):
            runs[name] = evaluate_with_predictions(
                b, args.heldout, opts, model=model, calibration_data=args.select
            )
    gold = [json.loads(line)["label"] for line in args.heldout.read_text().splitlines() if line]
    labels = bundle.labels
    out: dict[str, object] = {"bundles": args.bundles, "model": bundle.student.model,
                              "heldout": str(args.heldout), "select": str(args.select),
                              "n": len(gold), "configs": {}, "paired": {},
                              "load_average": os.getloadavg()}  # fmt: skip
    print(
        f"{'config':<12} {'calibration':<11} {'Macro-F1 [95% CI]':<24} {'accuracy [95% CI]':<24} ms/req"
    )
    for name, ev in runs.items():
        r = ev.result
        shown = name
        cal = r.calibration_choice.choice if r.calibration_choice else "?"
        print(f"{shown:<40} {cal:<11} {r.macro_f1:.3f} [{r.macro_f1_ci[0]:.3f}, {r.macro_f1_ci[1]:.3f}]"
              f"     {r.accuracy:.3f} [{r.accuracy_ci[0]:.3f}, {r.accuracy_ci[1]:.3f}]     "
              f"{r.per_request_ms:.0f}")  # fmt: skip
        out["configs"][shown] = {  # type: ignore[index]
            "macro_f1": r.macro_f1, "macro_f1_ci": r.macro_f1_ci, "accuracy": r.accuracy,
            "accuracy_ci": r.accuracy_ci, "per_request_ms": r.per_request_ms,
            "prompt_tokens": ev.prompt_tokens, "calibration": cal,
            "calibration_scores": r.calibration_choice.macro_f1 if r.calibration_choice else None,
            "per_label_f1": {k: v.f1 for k, v in r.report.per_label.items()},
            "confusion": r.report.confusion,
            "predictions": [p.label for p in ev.predictions],
        }  # fmt: skip
    # every bundle against each baseline, and few-shot against zero-shot
    pairs = [(name, base) for name in args.bundles for base in baselines]
    pairs.append((baselines[1], baselines[0]))
    for name, base in pairs:
        mine = [p.label for p in runs[name].predictions]
        theirs = [p.label for p in runs[base].predictions]
        d = paired_bootstrap_delta(gold, mine, theirs, labels, n_boot=2000, seed=0)
        print(f"{name} - {base}: Macro-F1 {d.macro_f1:+.3f} "
              f"[{d.macro_f1_ci[0]:+.3f}, {d.macro_f1_ci[1]:+.3f}], accuracy "
              f"{d.accuracy:+.3f} [{d.accuracy_ci[0]:+.3f}, {d.accuracy_ci[1]:+.3f}] "
              "(95% paired bootstrap, 2000 resamples)")  # fmt: skip
        out["paired"][f"{name} - {base}"] = msgspec.to_builtins(d)  # type: ignore[index]
    line = msgspec.json.encode(out).decode()
    print(line)
    if args.json_out:
        atomic_write(args.json_out, (line + "\n").encode())


if __name__ == "__main__":
    main()
