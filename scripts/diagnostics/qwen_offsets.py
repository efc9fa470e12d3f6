"""Would a calibration fitted on the selection slice help Qwen-1.5B on StereoSet? Per-label
log-probability offsets (grid -4..4 step 0.25, two free, Macro-F1 on dev-select) for the
zero-shot prompt and each bundle named on the command line (a distilled one, for example),
scored on dev-heldout with paired bootstrap intervals. Uncalibrated probabilities are saved
under RUNS/probe/offsets and reused on a rerun. The slices come from scripts/dev_slices.py.

    PLD_RUNS=runs python scripts/diagnostics/qwen_offsets.py [runs/stereoset/run1.pld.json ...]
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np

from pld.metrics import macro_f1, paired_bootstrap_delta
from pld.runtime import Classifier, ClassifierOptions, Model, load_bundle, resolve_bundle_path

RUNS = Path(os.environ.get("PLD_RUNS", "runs"))
GRID = np.round(np.arange(-4, 4.01, 0.25), 2)


def read(path: Path) -> list[dict[str, str]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x]


def main() -> None:
    out_dir = RUNS / "probe" / "offsets"
    out_dir.mkdir(parents=True, exist_ok=True)
    sel, held = (
        read(RUNS / "stereoset/dev-select.jsonl"),
        read(RUNS / "stereoset/dev-heldout.jsonl"),
    )
    zero_shot = load_bundle(resolve_bundle_path("stereoset"))  # 0 rules
    prompts = [("zero-shot", zero_shot)] + [
        (Path(a).stem, load_bundle(Path(a))) for a in sys.argv[1:]
    ]
    labels = zero_shot.labels
    print("load", os.getloadavg(), flush=True)
    probs: dict[str, dict[str, np.ndarray]] = {}
    with Model.open("qwen2.5-coder-1.5b-instruct") as model:
        for name, bundle in prompts:
            opts = ClassifierOptions(prefix_cache=False, calibrate=False, allow_model_mismatch=True)
            clf = Classifier(bundle, model, opts)
            probs[name] = {}
            for split, recs in (("select", sel), ("heldout", held)):
                f = out_dir / f"{name}-{split}.npy"
                if not f.exists():
                    p = [[clf.classify(r["text"]).probs[k] for k in labels] for r in recs]
                    np.save(f, np.array(p))
                probs[name][split] = np.load(f)
            clf.close()
    gs, gh = [r["label"] for r in sel], [r["label"] for r in held]

    def pred(p: np.ndarray, off: np.ndarray) -> list[str]:
        return [labels[i] for i in np.argmax(np.log(p + 1e-12) + off, axis=1)]

    def fit(p: np.ndarray) -> np.ndarray:
        best, arg = -1.0, np.zeros(3)
        for a, b in itertools.product(GRID, GRID):  # labels 0 and 1 against label 2
            off = np.array([a, b, 0.0])
            m = macro_f1(gs, pred(p, off), labels)
            if m > best + 1e-9:
                best, arg = m, off
        return arg

    res: dict[str, dict[str, list[str]]] = {}
    for name, p in probs.items():
        off = fit(p["select"])
        res[name] = {"none": pred(p["heldout"], np.zeros(3)), "fitted": pred(p["heldout"], off)}
        sel_none = macro_f1(gs, pred(p["select"], np.zeros(3)), labels)
        sel_fit = macro_f1(gs, pred(p["select"], off), labels)
        print(f"{name}: offsets {off.tolist()}; select Macro-F1 {sel_none:.3f} -> {sel_fit:.3f}; "
              f"heldout {macro_f1(gh, res[name]['none'], labels):.3f} -> "
              f"{macro_f1(gh, res[name]['fitted'], labels):.3f}", flush=True)  # fmt: skip
    pairs = [((n, "fitted"), (n, "none")) for n in res]
    for n in list(res)[1:]:
        pairs += [((n, "fitted"), ("zero-shot", "fitted")), ((n, "fitted"), ("zero-shot", "none"))]
    for a, b in pairs:
        d = paired_bootstrap_delta(gh, res[a[0]][a[1]], res[b[0]][b[1]], labels, n_boot=2000)
        print(f"{a} - {b}: Macro-F1 {d.macro_f1:+.3f} [{d.macro_f1_ci[0]:+.3f}, "
              f"{d.macro_f1_ci[1]:+.3f}], accuracy {d.accuracy:+.3f}", flush=True)  # fmt: skip
    print("load", os.getloadavg(), flush=True)


if __name__ == "__main__":
    main()
