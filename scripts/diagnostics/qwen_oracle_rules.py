"""Can Qwen-1.5B use per-target knowledge at all? Rules templated from gold training labels (no
teacher): for each of StereoSet's targets, the words that filled the blank in its stereotype and
anti-stereotype training sentences. Compared with zero-shot on the selection slice.

    PLD_RUNS=runs python scripts/diagnostics/qwen_oracle_rules.py [TOP_K]
"""

from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path

from pld.metrics import score
from pld.runtime import Classifier, ClassifierOptions, Model, load_bundle, resolve_bundle_path

RUNS = Path(os.environ.get("PLD_RUNS", "runs"))
TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "stereoset" / "train.jsonl"


def fill(fields: dict[str, str]) -> str | None:
    """The words the sentence put where the context says BLANK."""
    context, sentence = fields["context"], fields["sentence"]
    if "BLANK" not in context:
        return None
    a, b = context.split("BLANK", 1)
    if sentence.lower().startswith(a.lower()) and sentence.lower().endswith(b.lower()):
        word = sentence[len(a) : len(sentence) - len(b)].strip(" .")
        return word if 0 < len(word) < 30 else None
    return None


def main() -> None:
    k = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    prof: dict[str, dict[str, collections.Counter[str]]] = collections.defaultdict(
        lambda: collections.defaultdict(collections.Counter)
    )
    for line in TRAIN.read_text().splitlines():
        r = json.loads(line)
        word = fill(r["fields"])
        if word and r["label"] != "unrelated":
            prof[r["fields"]["target"].strip()][r["label"]][word.lower()] += 1
    rules = []
    for t in sorted(prof, key=str.lower):
        st = ", ".join(w for w, _ in prof[t]["stereotype"].most_common(k))
        an = ", ".join(w for w, _ in prof[t]["anti-stereotype"].most_common(k))
        rules.append(f"If the sentence portrays {t} as {st} or similar, answer stereotype; "
                     f"as {an} or similar, answer anti-stereotype.")  # fmt: skip
    bundle = load_bundle(resolve_bundle_path("stereoset"))  # 0 rules; made for Gemma-3 270M
    base = bundle.system_prompt
    head, tail = base.rsplit("\n\n", 1)
    listed = "\n".join(f"{i}. {x}" for i, x in enumerate(rules, 1))
    oracle = f"{head}\n\nRules:\n{listed}\n\n{tail}"
    recs = [json.loads(x) for x in (RUNS / "stereoset/dev-select.jsonl").read_text().splitlines()]
    gold = [r["label"] for r in recs]
    print(len(rules), "rules; the first:", rules[0], flush=True)
    with Model.open("qwen2.5-coder-1.5b-instruct") as model:
        for name, system in (("zero-shot", base), ("oracle rules", oracle)):
            opts = ClassifierOptions(
                prefix_cache=False, calibrate=False, n_ctx=8192, allow_model_mismatch=True
            )
            clf = Classifier(bundle, model, opts, system_prompt=system)
            pred = [clf.classify(r["text"]).label for r in recs]
            rep = score(gold, pred, bundle.labels)
            f1 = {k: round(v.f1, 3) for k, v in rep.per_label.items()}
            print(f"{name}: {len(clf.prefix_tokens)} prefix tokens, Macro-F1 {rep.macro_f1:.3f} "
                  f"{f1}, accuracy {rep.accuracy:.3f}, answers {collections.Counter(pred)}", flush=True)  # fmt: skip
            clf.close()


if __name__ == "__main__":
    main()
