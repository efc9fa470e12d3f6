"""The distiller: data sampling, clustering, the prompt budget, repairs, and whole runs.

Whole runs use the real student (Gemma-3 270M through pld.runtime). The teacher is either the
scripted server of tests/servers.py, which answers each stage's prompt by its kind and injects
faults a real server will not produce on demand (429, 500, a slow reply, malformed JSON), or a
real llama-cpp-python server running SmolLM2, killed mid-run and restarted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from conftest import data_file, records
from servers import LlamaServer, Reply, ScriptedServer, chat_body

from pld.distiller.ask import AskStats, ask_json, prompt_hashes
from pld.distiller.cache import ResponseCache
from pld.distiller.cluster import cluster_vectors, median_distance, representatives
from pld.distiller.consolidate import fit_budget
from pld.distiller.data import Example, load_examples, load_task, stratified_sample
from pld.distiller.extract import Extraction
from pld.distiller.pipeline import Settings, distill
from pld.distiller.teacher import OpenAITeacher
from pld.errors import DataError, PldError
from pld.runtime.bundle import Instruction, Label, Task, load_bundle, render_system_prompt

TASK = Task(
    name="toy",
    description="Decide whether a review is positive or negative.",
    labels=[Label(name="pos", definition="the review praises"), Label(name="neg", definition="the review complains")],
    input_format="one review",
)  # fmt: skip


# ---- data ----------------------------------------------------------------------------------


def _examples(counts: dict[str, int]) -> list[Example]:
    out = []
    for label, n in counts.items():
        out += [Example(id=f"{label}{i}", text=f"text {label} {i}", label=label) for i in range(n)]
    return out


def test_stratified_sample_keeps_proportions_and_is_seeded() -> None:
    data = _examples({"a": 60, "b": 30, "c": 10})
    s = stratified_sample(data, 20, seed=0)
    assert len(s) == 20
    assert [sum(x.label == k for x in s) for k in "abc"] == [12, 6, 2]
    assert s == stratified_sample(data, 20, seed=0)
    assert s != stratified_sample(data, 20, seed=1)
    assert [x.id for x in s] == [x.id for x in data if x in s]  # file order kept
    tiny = stratified_sample(data, 3, seed=0)
    assert sorted(x.label for x in tiny) == ["a", "b", "c"]  # every label when n allows
    assert stratified_sample(data, None) == data and stratified_sample(data, 500) == data
    with pytest.raises(DataError, match="positive"):
        stratified_sample(data, 0)


def test_tasks_builtin_and_from_files(tmp_path: Path) -> None:
    assert [x.name for x in load_task("stereoset").labels] == [
        "stereotype",
        "anti-stereotype",
        "unrelated",
    ]
    js = tmp_path / "toy.json"
    js.write_bytes(msgspec.json.encode(TASK))
    assert load_task(js) == TASK
    toml = tmp_path / "toy.toml"
    toml.write_text(
        'name = "toy"\ndescription = "Decide."\ninput_format = "one review"\n'
        '[[labels]]\nname = "pos"\ndefinition = "praise"\n[[labels]]\nname = "neg"\ndefinition = "complaint"\n'
    )
    assert [x.name for x in load_task(toml).labels] == ["pos", "neg"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "description": "d", "input_format": "i"}')
    with pytest.raises(DataError, match="labels"):
        load_task(bad)
    with pytest.raises(DataError, match="built-in task"):
        load_task("no-such-task")


def test_examples_from_csv_and_bad_labels(tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text('review,verdict\n"great, really",pos\nawful,neg\n')
    ex = load_examples(csv, ["pos", "neg"], text_field="review", label_field="verdict")
    assert [(x.text, x.label) for x in ex] == [("great, really", "pos"), ("awful", "neg")]
    with pytest.raises(DataError, match="--text-field"):
        load_examples(csv, ["pos", "neg"])
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"text": "ok", "label": "pos"}\n{"text": "meh", "label": "maybe"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: label 'maybe'"):
        load_examples(jl, ["pos", "neg"])


# ---- clustering and the budget on fixed embeddings -----------------------------------------


def _blobs() -> tuple[list[list[float]], list[int]]:
    """Three tight groups of 8, 7 and 6 unit vectors around orthogonal axes, plus 3 outliers."""
    rng = np.random.default_rng(0)
    vecs, truth = [], []
    for axis, n in ((0, 8), (1, 7), (2, 6)):
        for _ in range(n):
            v = np.zeros(8)
            v[axis] = 1.0
            vecs.append(v + rng.normal(0, 0.05, 8))
            truth.append(axis)
    for axis in (3, 4, 5):
        v = np.zeros(8)
        v[axis] = 1.0
        vecs.append(v)
        truth.append(-1)
    return [list(v) for v in vecs], truth


def test_dbscan_finds_the_groups_and_drops_noise() -> None:
    vecs, truth = _blobs()
    c = cluster_vectors(vecs, eps=0.4, min_samples=6)
    assert c.sizes == [8, 7, 6]
    assert [sorted({truth[i] for i in group}) for group in c.clusters] == [[0], [1], [2]]
    assert c.noise == [21, 22, 23]
    # the group of 6 is exactly min_samples: one more and it is noise too
    assert cluster_vectors(vecs, eps=0.4, min_samples=7).sizes == [8, 7]
    # a huge radius merges everything that is not orthogonal
    assert cluster_vectors(vecs, eps=1.5, min_samples=2).sizes == [24]
    assert representatives(vecs, c.clusters[0], 3) == sorted(
        representatives(vecs, c.clusters[0], 3)
    )
    assert len(representatives(vecs, c.clusters[0], 3)) == 3
    assert 0.9 < median_distance(vecs) < 1.1  # mostly orthogonal pairs
    assert median_distance([[1.0, 0.01 * i] for i in range(10)]) < 0.01  # nearly parallel


def test_budget_prunes_lowest_support_first_and_fits() -> None:
    rules = [Instruction(id=f"r{i}", text=f"rule number {i} " + "word " * 10, support=s)
             for i, s in enumerate([9, 2, 7, 2, 5], 1)]  # fmt: skip

    def words(text: str) -> int:
        return len(text.split())

    budget = words(render_system_prompt(TASK, [rules[0], rules[2], rules[4]]))
    kept, dropped = fit_budget(TASK, rules, budget, words)
    assert [x.id for x in dropped] == ["r4", "r2"]  # support 2, the later one first
    assert [x.id for x in kept] == ["r1", "r3", "r5"]  # order kept
    kept, dropped = fit_budget(TASK, rules, budget - 1, words)
    assert [x.id for x in dropped] == ["r4", "r2", "r5"]
    full = words(render_system_prompt(TASK, rules))
    assert fit_budget(TASK, rules, full, words) == (rules, [])
    base = words(render_system_prompt(TASK, []))
    kept, dropped = fit_budget(TASK, rules, base, words)
    assert kept == [] and len(dropped) == 5


# ---- repairs -------------------------------------------------------------------------------


def test_malformed_replies_are_repaired_or_counted(tmp_path: Path) -> None:
    server = ScriptedServer()
    server.thread.start()
    good = json.dumps({"rationale": "because", "rule": "A review that praises the product is pos."})
    server.push(
        Reply(200, chat_body("I think the rule is: praise means pos")),  # no JSON at all
        Reply(200, chat_body(good)),  # the repair of conversation 0
    )
    try:
        with OpenAITeacher(
            "scripted", server.url, cache=ResponseCache(tmp_path / "c"), backoff=0.01
        ) as t:
            stats = AskStats()
            out = ask_json(t, [[{"role": "user", "content": "x"}]], Extraction, label="t",
                           max_repairs=2, concurrency=1, stats=stats, show_progress=False)  # fmt: skip
            assert out == [
                Extraction(rationale="because", rule="A review that praises the product is pos.")
            ]
            assert (stats.asked, stats.repaired, stats.failed) == (1, 1, 0)
            repair = server.log[1]["body"]["messages"]
            assert repair[1] == {
                "role": "assistant",
                "content": "I think the rule is: praise means pos",
            }
            assert (
                "holds no JSON object" in repair[2]["content"] and '"rule"' in repair[2]["content"]
            )

            server.push(*[Reply(200, chat_body('{"rationale": "r", "rule": ""}'))] * 3)
            stats = AskStats()
            out = ask_json(t, [[{"role": "user", "content": "y"}]], Extraction, label="t",
                           max_repairs=2, concurrency=1, stats=stats, show_progress=False)  # fmt: skip
            assert out == [None] and (stats.repaired, stats.failed) == (0, 1)
            assert len(server.log) == 5
            # a runaway reply is cut when it is sent back, so the repair fits the context
            server.push(Reply(200, chat_body("x" * 50_000)), Reply(200, chat_body(good)))
            ask_json(t, [[{"role": "user", "content": "z"}]], Extraction, label="t",
                     concurrency=1, show_progress=False)  # fmt: skip
            assert len(server.log[-1]["body"]["messages"][1]["content"]) < 2100
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


# ---- a whole run against the scripted teacher ----------------------------------------------

AXES = {"anti-stereotype": 1, "stereotype": 0, "unrelated": 2}


def _label_of(text: str, axes: dict[str, int] = AXES) -> str:
    return next(name for name in axes if name in text)


def _answer(body: dict[str, Any], axes: dict[str, int] = AXES) -> Reply:
    """What a cooperative teacher says to each of the distiller's prompts."""
    if "input" in body:  # embeddings: a direction per label the rule leads to
        rows = []
        for i, text in enumerate(body["input"]):
            v = [0.0] * 6
            v[axes[_label_of(text, axes)]] = 1.0
            v[3 + int(hashlib.sha1(text.encode()).hexdigest(), 16) % 3] = 0.05
            rows.append({"index": i, "embedding": v})
        return Reply(200, {"data": rows, "usage": {"prompt_tokens": 5 * len(rows)}})
    text = body["messages"][0]["content"]
    if "Correct label:" in text and "numbered rules" not in text:
        label = re.search(r"Correct label: (\S+)", text)[1]  # type: ignore[index]
        reply = {
            "rationale": f"The sentence fits {label}.",
            "rule": f"When a sentence matches the pattern of this kind, answer {label}.",
        }
    elif "written independently" in text:
        label = _label_of(text.split("recurring pattern:")[1], axes)
        reply = {"instruction": f"Sentences that follow this shared pattern are {label}."}
    else:
        first, second = list(axes)[:2]
        reply = {"rules": [{"text": f"Inputs that match the first pattern are {first}.", "based_on": [1]},
                           {"text": f"Inputs that match the second pattern are {second}.", "based_on": []}]}  # fmt: skip
    return Reply(200, chat_body(json.dumps(reply), 40, 20))


@pytest.mark.model
def test_whole_run_survives_faults_and_replays_offline(tmp_path: Path) -> None:
    server = ScriptedServer()
    seen = {"n": 0}
    faults = [
        Reply(429, {"error": "slow down"}, {"Retry-After": "0"}),
        Reply(500, {"error": "boom"}),
        Reply(503, {"error": "busy"}),
        Reply(200, chat_body("{not json"), delay=0.0),  # malformed: repaired by a new request
        Reply(200, {"unexpected": True}, delay=1.5),  # slower than the 1 s timeout: retried
    ]

    def respond(body: dict[str, Any]) -> Reply:
        seen["n"] += 1
        if seen["n"] <= len(faults) and "messages" in body:
            return faults[seen["n"] - 1]
        return _answer(body)

    server.responder = respond
    server.thread.start()
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    rows = records("stereoset", "train", 18)
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    per_label = sorted((sum(r["label"] == k for r in rows) for k in AXES), reverse=True)
    dev.write_text("".join(json.dumps(r) + "\n" for r in records("stereoset", "dev", 9)))
    spec = f"openai:scripted@{server.url}"
    kwargs: dict[str, Any] = dict(
        task="stereoset", train=train, dev=dev, teacher=spec, embedder=spec, out=tmp_path / "b.pld.json",
        settings=Settings(min_samples=2, max_rounds=1, loop_limit=9), cache_dir=tmp_path / "cache",
        concurrency=1, show_progress=False, teacher_options={"timeout": 1.0, "backoff": 0.01},
        log=lambda line: None,
    )  # fmt: skip
    try:
        first = distill(**kwargs)
        assert first.extracted == 18 and first.repaired == 1 and first.failed == 0
        # one cluster per label the rules lead to; a label with one example is noise
        assert first.clusters == [n for n in per_label if n >= 2]
        assert first.noise == sum(n for n in per_label if n < 2)
        assert first.teacher_calls > 18 and first.rounds == 1
        bundle = load_bundle(first.bundle)
        assert bundle.provenance["teacher"] == {"backend": "openai", "model": "scripted"}
        assert bundle.provenance["prompts"] == prompt_hashes()
        assert bundle.provenance["datasets"]["train"]["used"] == 18
        assert bundle.metrics and bundle.metrics.n == 9
        assert bundle.metrics.zero_shot_macro_f1 == pytest.approx(
            first.dev_macro_f1_zero_shot, abs=1e-6
        )
        assert len(bundle.instructions) == first.rules >= 1
        calls = len(server.log)
        data = Path(first.bundle).read_bytes()
        student = sorted((tmp_path / "cache" / "student").glob("*.json"))
        assert len(student) >= 3  # zero-shot, rules, and the round's train and dev runs
        stamps = [p.stat().st_mtime_ns for p in student]

        again = distill(**kwargs)  # the identical run: all from the cache
        assert (
            again.teacher_calls == 0 and again.cache_hits == first.teacher_calls + first.cache_hits
        )
        assert again.tokens_total == first.tokens_total and again.tokens_spent == 0
        assert len(server.log) == calls
        assert again.unchanged and Path(first.bundle).read_bytes() == data
        assert [p.stat().st_mtime_ns for p in student] == stamps  # the student was not rerun

        student[0].write_text("[not json")  # a damaged entry is classified again
        third = distill(**kwargs)
        assert third.unchanged and Path(first.bundle).read_bytes() == data
        assert msgspec.json.decode(student[0].read_bytes(), type=list[str])
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


@pytest.mark.model
def test_any_task_from_a_task_file_and_csv(tmp_path: Path) -> None:
    axes = {"pos": 0, "neg": 1}
    server = ScriptedServer()
    server.responder = lambda body: _answer(body, axes)
    server.thread.start()
    task = tmp_path / "reviews.toml"
    task.write_text(
        'name = "reviews"\ndescription = "Decide whether a product review is positive or negative."\n'
        'input_format = "one review"\n[[labels]]\nname = "pos"\ndefinition = "the review praises"\n'
        '[[labels]]\nname = "neg"\ndefinition = "the review complains"\n'
    )
    good = [
        "Works great",
        "Love it",
        "Best purchase this year",
        "Sturdy and cheap",
        "Five stars",
        "Does the job well",
    ]
    bad = [
        "Broke in a day",
        "Waste of money",
        "Arrived damaged",
        "Stopped working",
        "Terrible smell",
        "Never again",
    ]
    data = tmp_path / "reviews.csv"
    data.write_text("review,verdict\n" + "".join(f"{t},pos\n{u},neg\n" for t, u in zip(good, bad)))
    spec = f"openai:scripted@{server.url}"
    try:
        result = distill(
            task=str(task), train=data, dev=data, teacher=spec, embedder=spec,
            out=tmp_path / "reviews.pld.json", cache_dir=tmp_path / "cache", show_progress=False,
            settings=Settings(min_samples=3, max_rounds=1, text_field="review", label_field="verdict"),
            log=lambda line: None,
        )  # fmt: skip
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
    assert result.extracted == 12 and result.clusters == [6, 6]
    bundle = load_bundle(result.bundle)
    assert bundle.name == "reviews" and bundle.labels == ["pos", "neg"]
    assert bundle.provenance["datasets"]["train"]["file"] == "reviews.csv"
    assert any("pos" in x.text for x in bundle.instructions)


def test_ctrl_c_keeps_finished_replies_and_says_how_to_resume(tmp_path: Path) -> None:
    server = ScriptedServer()
    server.responder = lambda body: dataclasses.replace(_answer(body), delay=0.3)
    server.thread.start()
    cache = tmp_path / "cache"
    args = [
        "distill", "--task", "stereoset", "--train", str(data_file("stereoset", "train")),
        "--dev", str(data_file("stereoset", "dev")), "--teacher", f"openai:scripted@{server.url}",
        "--limit", "30", "--dev-limit", "6", "--concurrency", "1", "--cache-dir", str(cache), "--out",
        str(tmp_path / "b.pld.json"), "--no-progress",
    ]  # fmt: skip
    run = _pld(*args, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while _entries(cache) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
        server.httpd.shutdown()
        server.httpd.server_close()
    assert run.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "run the same command again" in stderr
    assert "Traceback" not in stderr
    assert _entries(cache) >= 3  # what finished is kept for the rerun


# ---- a whole run against a real server, killed and resumed ---------------------------------


def _pld(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    pld = str(Path(sys.executable).parent / "pld")

    def interruptible() -> None:
        # a job started in the background by a shell (as CI may run us) ignores SIGINT, and a
        # child inherits that; a user's terminal does not
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen([pld, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=interruptible)  # fmt: skip


def _entries(cache: Path) -> int:
    return sum(1 for _ in cache.glob("[0-9a-f][0-9a-f]/*.json"))  # teacher replies only


@pytest.mark.model
@pytest.mark.slow
def test_real_server_run_resumes_after_a_crash_and_replays_offline(tmp_path: Path) -> None:
    from pld.models import resolve
    from pld.runtime.classifier import Classifier

    server = LlamaServer(resolve("smollm2-135m-instruct").path, tmp_path / "server.log", n_ctx=2048)
    server.start()
    cache, out = tmp_path / "cache", tmp_path / "ss.pld.json"
    args = [
        "distill", "--task", "stereoset", "--train", str(data_file("stereoset", "train")),
        "--dev", str(data_file("stereoset", "dev")), "--teacher", f"openai:smollm2@{server.url}",
        "--structured-output", "json_object", "--limit", "9", "--dev-limit", "9", "--loop-limit", "6",
        "--min-samples", "2", "--eps", "0.6", "--rounds", "1", "--concurrency", "1", "--retries", "2",
        "--timeout", "60", "--cache-dir", str(cache), "--out", str(out), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        # 1. the server dies during extraction: the run stops with a clear error
        run = _pld(*args, env=env)
        deadline = time.monotonic() + 240
        while _entries(cache) < 3 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        server.stop()
        stdout, stderr = run.communicate(timeout=120)
        assert run.returncode == 2, stderr[-2000:]
        assert "unreachable" in stderr and "start it or check --teacher" in stderr
        kept = _entries(cache)
        assert 3 <= kept < 9

        # 2. the same command resumes: nothing that finished is asked again
        server.start()
        run = _pld(*args, env=env)
        stdout, stderr = run.communicate(timeout=900)
        assert run.returncode == 0, stderr[-3000:]
        second = json.loads(stdout.strip().splitlines()[-1])
        assert second["cache_hits"] >= kept
        assert second["teacher_calls"] == _entries(cache) - kept  # every call made a new entry
        assert {"bundle", "rules", "prompt_tokens", "teacher_calls", "cache_hits", "dev_macro_f1_zero_shot",
                "dev_macro_f1_bundle", "rounds"} <= set(second)  # fmt: skip
        assert "dev Macro-F1 (n=9)" in stdout and "extraction:" in stderr
        data = out.read_bytes()

        # 3. with the server gone, the finished run replays from the cache alone
        server.stop()
        run = _pld(*args, env=env)
        stdout, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-3000:]
        third = json.loads(stdout.strip().splitlines()[-1])
        assert third["teacher_calls"] == 0 and third["unchanged"]
        assert out.read_bytes() == data
        assert third["dev_macro_f1_bundle"] == second["dev_macro_f1_bundle"]
    finally:
        server.stop()

    # the bundle is a working bundle for the runtime
    with Classifier.open(out) as clf:
        pred = clf.classify(records("stereoset", "dev", 1)[0]["text"])
        assert pred.label in clf.labels and abs(sum(pred.probs.values()) - 1) < 1e-6


def test_pipeline_errors_name_the_fix(tmp_path: Path) -> None:
    train = tmp_path / "t.jsonl"
    train.write_text('{"text": "fine", "label": "great"}\n')
    with pytest.raises(DataError, match="not one of the task's labels"):
        distill(task="stereoset", train=train, dev=train, teacher="openai:x@http://127.0.0.1:9/v1",
                out=tmp_path / "o.json", cache_dir=tmp_path / "c", show_progress=False)  # fmt: skip
    with pytest.raises(PldError, match="local:NAME_OR_PATH"):
        from pld.distiller.backends import open_teacher

        open_teacher("gpt-4o", cache=ResponseCache(tmp_path / "c"))
