"""Measure `pld device pull`: time from pull start to activation per bundle (fetch, verify,
prime, activate), the first classification after an update against the steady state, and a
classification while another process pulls.

Each bundle is published with a throwaway key to a local directory and pulled, as a user runs
it (`pld device pull --nice 0` in a child process, alone on the machine), into a fresh device
directory; PLD_CACHE_DIR is a temporary directory. The classification during a pull runs at
4 requests/s in this process while a child pulls the 4,664-token bundle with `--nice 0` and
with the default `--nice 19`. Prints a table, then one JSON line.

    python scripts/bench_pull.py [--requests 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PLD = str(Path(sys.executable).parent / "pld")
BUNDLES = {  # label -> bundle (a shipped name or a file)
    "stereoset": "stereoset",
    "contractnli": "contractnli",
    "logiqa": "logiqa",
    "contractnli-long (4,664 tokens)": str(ROOT / "bench" / "data" / "contractnli-long.pld.json"),
}
INPUTS = ROOT / "bench" / "data" / "stereoset-dev-64.jsonl"
PERIOD = 0.25  # seconds between requests while measuring a classification during a pull


def pld(*args: str) -> tuple[dict[str, Any], float]:
    """Run `pld ARGS`; return its last line (JSON) and its wall time in ms."""
    cmd = [PLD, *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def texts(n: int) -> list[str]:
    with INPUTS.open() as fh:
        return [json.loads(line)["text"] for line, _ in zip(fh, range(n))]


def latencies(clf: Any, inputs: list[str]) -> list[float]:
    out = []
    for text in inputs:
        t0 = time.perf_counter()
        clf.classify(text)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def paced(clf: Any, inputs: list[str], stop: Any) -> list[float]:
    """Latencies of one request every PERIOD seconds until ``stop(requests done)``."""
    out: list[float] = []
    due = time.perf_counter()
    while not stop(len(out)):
        out += latencies(clf, [inputs[len(out) % len(inputs)]])
        due += PERIOD
        time.sleep(max(0.0, due - time.perf_counter()))
    return out


def p(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=16)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-pull-"))
    os.environ["PLD_CACHE_DIR"] = str(tmp / "cache")

    import pld.models as models
    from pld.fleet import SigningKey, publish
    from pld.runtime import Classifier, Model

    t0 = time.perf_counter()
    models.resolve(models.DEFAULT_MODEL)  # assemble and hash the model once, outside the pulls
    model_ms = (time.perf_counter() - t0) * 1000
    print(f"model resolved (assembled and verified once) in {model_ms:.0f} ms\n", flush=True)
    key = SigningKey.generate()
    (tmp / "signing.pub").write_bytes(key.public.pem())
    inputs = texts(args.requests)
    rows: list[dict[str, Any]] = []
    model = Model.open(models.DEFAULT_MODEL)
    for label, bundle in BUNDLES.items():
        pub, dev = tmp / f"pub-{len(rows)}", tmp / f"dev-{len(rows)}"
        publish([bundle], pub, channel="stable", keys=[key])
        result, wall = pld("device", "pull", "--from", str(pub), "--device-dir", str(dev),
                           "--trusted-key", str(tmp / "signing.pub"), "--nice", "0")  # fmt: skip
        (change,) = result["changed"]
        task = change["task"]
        # the first classification after the update, in a classifier opened as a device would
        t1 = time.perf_counter()
        clf = Classifier.open(task, device_dir=dev, model=model)
        open_ms = (time.perf_counter() - t1) * 1000
        restored = clf.restore_ms is not None
        first = latencies(clf, inputs[:1])[0]
        steady = latencies(clf, inputs[1:] * 2)
        prompt_tokens = len(clf.prefix_tokens)
        clf.close()
        # what the first request would have waited for had the pull not primed: a cold prime
        cold = Classifier.open(task, device_dir=dev, model=model, state_dir=tmp / f"cold-{task}")
        cold_prime_ms = cold.prime_ms or 0.0
        cold.close()
        t = result["timings"]
        rows.append(
            {
                "bundle": label,
                "prompt_tokens": prompt_tokens,
                "pull_wall_ms": wall,
                "pull_total_ms": t["total_ms"],
                "fetch_ms": t["fetch_ms"],
                "verify_ms": t["verify_ms"],
                "prime_ms": t["prime_ms"],
                "activate_ms": t["activate_ms"],
                "task_prime_ms": change["timings"]["prime_ms"],
                "open_after_update_ms": open_ms,
                "restored": restored,
                "first_request_ms": first,
                "steady_p50_ms": statistics.median(steady),
                "steady_p95_ms": p(steady, 0.95),
                "unprimed_open_ms": cold_prime_ms,
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    # a classification while another process pulls (and primes) the 4,664-token bundle: one
    # request every PERIOD seconds, as a device serving light traffic sees them
    during: dict[str, Any] = {}
    clf = Classifier.open("stereoset", device_dir=tmp / "dev-0", model=model)
    idle = paced(clf, inputs, lambda n: n >= 40)
    for nice in (0, 19):
        pub, dev = tmp / f"pub-during-{nice}", tmp / f"dev-during-{nice}"
        publish([BUNDLES["contractnli-long (4,664 tokens)"]], pub, channel="stable", keys=[key])
        cmd = [PLD, "device", "pull", "--from", str(pub), "--device-dir", str(dev),
               "--trusted-key", str(tmp / "signing.pub")]  # fmt: skip
        t_pull = time.perf_counter()
        proc = subprocess.Popen([*cmd, "--nice", str(nice)], stdout=subprocess.PIPE)
        busy = paced(clf, inputs, lambda n, proc=proc: proc.poll() is not None)
        out, _ = proc.communicate()
        result = json.loads(out.decode().strip().splitlines()[-1])
        during[f"nice_{nice}"] = {
            "pull_wall_ms": (time.perf_counter() - t_pull) * 1000,
            "pull_prime_ms": result["timings"]["prime_ms"],
            "requests": len(busy),
            "p50_ms": statistics.median(busy),
            "p95_ms": p(busy, 0.95),
            "max_ms": max(busy),
        }
        print(json.dumps(during[f"nice_{nice}"]), file=sys.stderr, flush=True)
    clf.close()
    model.close()

    print()
    head = (f"{'bundle':<32} {'tokens':>6} {'wall':>7} {'pull':>7} {'fetch':>6} {'verify':>6} "
            f"{'prime':>7} {'activ.':>6} | {'open':>5} {'1st':>5} {'p50':>5} {'p95':>5} {'unprimed':>8}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['bundle']:<32} {r['prompt_tokens']:>6} {r['pull_wall_ms']:>7.0f} "
            f"{r['pull_total_ms']:>7.0f} {r['fetch_ms']:>6.1f} {r['verify_ms']:>6.1f} "
            f"{r['prime_ms']:>7.0f} {r['activate_ms']:>6.1f} | {r['open_after_update_ms']:>5.0f} "
            f"{r['first_request_ms']:>5.1f} {r['steady_p50_ms']:>5.1f} {r['steady_p95_ms']:>5.1f} "
            f"{r['unprimed_open_ms']:>8.0f}"
        )
    print(
        f"\nstereoset classification, idle: p50 {statistics.median(idle):.1f} ms, p95 "
        f"{p(idle, 0.95):.1f} ms (n={len(idle)})"
    )
    for name, d in during.items():
        print(
            f"during a pull of the 4,664-token bundle ({name.replace('_', ' ')}, pull "
            f"{d['pull_wall_ms']:.0f} ms, prime {d['pull_prime_ms']:.0f} ms): p50 "
            f"{d['p50_ms']:.1f} ms, p95 {d['p95_ms']:.1f} ms, max {d['max_ms']:.1f} ms "
            f"(n={d['requests']})"
        )
    print(
        json.dumps(
            {
                "model_resolve_ms": model_ms,
                "pulls": rows,
                "idle_p50_ms": statistics.median(idle),
                "idle_p95_ms": p(idle, 0.95),
                "during_pull": during,
            }
        )
    )


if __name__ == "__main__":
    main()
