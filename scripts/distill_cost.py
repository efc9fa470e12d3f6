"""Extrapolate a small `pld distill` run to the whole training set: teacher requests and tokens.

Usage: python scripts/distill_cost.py RUN.out [RUN.out ...]   (the stdout of `pld distill`)

Per stage, from the run's last JSON line and its bundle's provenance:
- extraction scales with the training records: requests and tokens per record used, times
  the records in the file;
- consolidation: tokens per cluster, times CLUSTERS (an assumption: about the number of rules
  a 4,096-token prompt budget holds; the small run's cluster count says nothing about a full one);
- the conflict loop: tokens per revision request as measured, times the default 2 rounds.
Tokens are counted by the teacher's tokenizer (the run's teacher, here SmolLM2's).
"""

from __future__ import annotations

import json
import sys

from pld.runtime.bundle import load_bundle

CLUSTERS = 100
ROUNDS = 2


def main(paths: list[str]) -> None:
    print(
        "| task | records used / in file | extraction per record (requests, tokens) | "
        "consolidation per cluster | revision per request | full run: requests | full run: tokens "
        "| full run, no repairs: requests, tokens |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        with open(path) as fh:
            result = json.loads(fh.read().strip().splitlines()[-1])
        bundle = load_bundle(result["bundle"])
        train = bundle.provenance["datasets"]["train"]
        used, records = train["used"], train["records"]
        st = result["stages"]
        ext, con, rev = st["extract"], st["consolidate"], st["revise"]

        def tokens(s: dict[str, int]) -> int:
            return s["prompt_tokens"] + s["completion_tokens"]

        ext_req, ext_tok = ext["requests"] / used, tokens(ext) / used
        con_tok = tokens(con) / max(con["requests"], 1)
        rev_tok = tokens(rev) / max(rev["requests"], 1)
        full_req = ext_req * records + CLUSTERS + ROUNDS
        full_tok = ext_tok * records + con_tok * CLUSTERS + rev_tok * ROUNDS
        # a teacher that never needs a repair: one request per record, at the first request's size
        per_request = tokens(ext) / max(ext["requests"], 1)
        clean_req = records + CLUSTERS + ROUNDS
        clean_tok = per_request * records + con_tok * CLUSTERS + rev_tok * ROUNDS
        print(f"| {bundle.task.name} | {used} / {records} | {ext_req:.2f}, {ext_tok:,.0f} | "
              f"{con_tok:,.0f} | {rev_tok:,.0f} | {full_req:,.0f} | {full_tok / 1e6:.2f} M | "
              f"{clean_req:,}, {clean_tok / 1e6:.2f} M |")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
