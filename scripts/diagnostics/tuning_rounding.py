"""How a tuning setting moves label probabilities: compare it with the defaults on the 4,664-token
benchmark bundle, for prefix reuse and for evaluation from scratch, and check that within each
setting reuse equals evaluation from scratch. Prints one JSON object.

    python scripts/diagnostics/tuning_rounding.py [--requests 24] [--full 4]
        [--ubatch N] [--kv-type K/V] [--flash-attn on|off|auto]   # pld classify's tuning flags
"""

from __future__ import annotations

import argparse
import json
import os

from pld.bench.inputs import default_bundle, default_texts
from pld.runtime import Classifier, ClassifierOptions, Model
from pld.runtime.options import tuning_overrides


def probs(clf: Classifier, texts: list[str], *, full: bool) -> list[dict[str, float]]:
    run = clf.classify_full if full else clf.classify
    return [dict(run(t).probs) for t in texts]


def max_diff(a: list[dict[str, float]], b: list[dict[str, float]]) -> float:
    return max(abs(x[k] - y[k]) for x, y in zip(a, b, strict=True) for k in x)


def agree(a: list[dict[str, float]], b: list[dict[str, float]]) -> float:
    same = [max(x, key=x.__getitem__) == max(y, key=y.__getitem__) for x, y in zip(a, b)]
    return sum(same) / len(same)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--full", type=int, default=4)
    ap.add_argument("--ubatch", type=int)
    ap.add_argument("--kv-type")
    ap.add_argument("--flash-attn")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    texts = default_texts()[: args.requests]
    bundle = str(default_bundle())
    tuned = tuning_overrides(args.kv_type, args.ubatch, args.flash_attn)
    out: dict[str, object] = {"load_start": os.getloadavg(), "tuning": tuned}
    got: dict[str, dict[str, list[dict[str, float]]]] = {}
    with Model.open("gemma-3-270m") as model:
        for name, given in (("default", {}), ("tuned", tuned)):
            opts = ClassifierOptions(calibrate=False, max_batch=1, n_threads=args.threads, **given)
            with Classifier.open(bundle, opts, model=model, prefix_cache=False) as c:
                reuse = probs(c, texts, full=False)
            with Classifier.open(bundle, opts, model=model, prefix_cache=False) as c:
                full = probs(c, texts[: args.full], full=True)
            got[name] = {"reuse": reuse, "full": full}
    d, u = got["default"], got["tuned"]
    n = args.full
    out |= {
        "inputs": len(texts),
        "full_inputs": n,
        "default_reuse_vs_full_max_dp": max_diff(d["reuse"][:n], d["full"]),
        "tuned_reuse_vs_full_max_dp": max_diff(u["reuse"][:n], u["full"]),
        "reuse_default_vs_tuned_max_dp": max_diff(d["reuse"], u["reuse"]),
        "reuse_default_vs_tuned_label_agreement": agree(d["reuse"], u["reuse"]),
        "full_default_vs_tuned_max_dp": max_diff(d["full"], u["full"]),
        "load_end": os.getloadavg(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
