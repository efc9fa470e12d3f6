"""Whole distillation runs: the real student (Gemma-3 270M through pld.runtime) and a teacher.

The teacher is either the scripted server of tests/servers.py, which answers each stage's
prompt by its kind and injects faults a real server will not produce on demand (429, 500, a
slow reply, malformed JSON), or a real llama-cpp-python server running SmolLM2, killed mid-run
and restarted. ``pld distill`` runs as a subprocess, the way a user types it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import data_file, pld_process, records
from servers import (
    STEREOSET_AXES,
    LlamaServer,
    Reply,
    ScriptedServer,
    chat_body,
    teacher_reply,
)

from pld.distiller.pipeline import Settings, distill
from pld.distiller.templates import prompt_hashes
from pld.runtime.bundle import load_bundle

# ---- whole runs against the scripted teacher -----------------------------------------------


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
        return teacher_reply(body)

    server.responder = respond
    server.thread.start()
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    rows = records("stereoset", "train", 18)
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    per_label = sorted((sum(r["label"] == k for r in rows) for k in STEREOSET_AXES), reverse=True)
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
        stored = msgspec.json.decode(student[0].read_bytes())  # probabilities and the prior
        assert len(stored["probs"]) in (9, 18) and len(stored["prior"]) == 3
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


@pytest.mark.model
def test_any_task_from_a_task_file_and_csv(tmp_path: Path) -> None:
    axes = {"pos": 0, "neg": 1}
    server = ScriptedServer()
    server.responder = lambda body: teacher_reply(body, axes)
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
    server.responder = lambda body: dataclasses.replace(teacher_reply(body), delay=0.3)
    server.thread.start()
    cache = tmp_path / "cache"
    args = [
        "distill", "--task", "stereoset", "--train", str(data_file("stereoset", "train")),
        "--dev", str(data_file("stereoset", "dev")), "--teacher", f"openai:scripted@{server.url}",
        "--limit", "30", "--dev-limit", "6", "--concurrency", "1", "--cache-dir", str(cache), "--out",
        str(tmp_path / "b.pld.json"), "--no-progress",
    ]  # fmt: skip
    run = pld_process(*args, env=dict(os.environ))
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


def _entries(cache: Path) -> int:
    return sum(1 for _ in cache.glob("[0-9a-f][0-9a-f]/*.json"))  # teacher replies only


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.timeout(1200)  # a real 135M teacher: minutes when the machine is busy
def test_real_server_run_resumes_after_a_crash_and_replays_offline(tmp_path: Path) -> None:
    from pld.models import resolve
    from pld.runtime.classifier import Classifier

    server = LlamaServer(resolve("smollm2-135m-instruct").path, tmp_path / "server.log")
    server.start()
    cache, out = tmp_path / "cache", tmp_path / "ss.pld.json"
    args = [
        "distill", "--task", "stereoset", "--train", str(data_file("stereoset", "train")),
        "--dev", str(data_file("stereoset", "dev")), "--teacher", f"openai:smollm2@{server.url}",
        "--structured-output", "json_object", "--limit", "9", "--dev-limit", "9", "--loop-limit", "6",
        "--min-samples", "2", "--eps", "0.6", "--rounds", "1", "--max-rules", "6", "--concurrency", "1",
        "--retries", "2", "--timeout", "60", "--cache-dir", str(cache), "--out", str(out), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        # 1. the server dies during extraction: the run stops with a clear error
        run = pld_process(*args, env=env)
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
        run = pld_process(*args, env=env)
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
        run = pld_process(*args, env=env)
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


# ---- the targeted conflict loop, with the real student ---------------------------------------


@pytest.mark.model
def test_targeted_loop_adds_one_rule_per_confusion_and_keeps_it_only_if_dev_rises(
    tmp_path: Path,
) -> None:
    """Each round targets the next most frequent (correct, answered) pair not tried yet; the new
    rule leads to the correct label, is appended, and stays only where dev Macro-F1 rose."""
    from pld.distiller.backends import open_teacher
    from pld.distiller.cache import ResponseCache
    from pld.distiller.data import Example, load_task
    from pld.distiller.loop import conflict_loop
    from pld.distiller.student import StudentRunner
    from pld.distiller.targeted import confusions
    from pld.runtime.bundle import Instruction

    server = ScriptedServer()
    server.responder = teacher_reply
    server.thread.start()
    task = load_task("stereoset")
    labels = [x.name for x in task.labels]
    ex = [Example(id=str(r["id"]), text=r["text"], label=r["label"])
          for r in records("stereoset", "train", 12)]  # fmt: skip
    dev = [Example(id=str(r["id"]), text=r["text"], label=r["label"])
           for r in records("stereoset", "dev", 9)]  # fmt: skip
    start = [
        Instruction(id="r1", text="If the sentence repeats a common belief, answer stereotype.")
    ]
    teacher = open_teacher(f"openai:scripted@{server.url}", cache=ResponseCache(tmp_path / "t"))
    try:
        with StudentRunner("gemma-3-270m", calibration="none", cache_dir=tmp_path / "s") as runner:
            train_run = runner.evaluate(task, start, ex, label="train", show_progress=False)
            wrong = [(e, p) for e, p in zip(ex, train_run.predictions) if p != e.label]
            expected = confusions(wrong, labels)
            assert expected, "the fixture must give the student something to get wrong"
            score = runner.evaluate(task, start, dev, label="dev", show_progress=False)
            final, final_score, rounds = conflict_loop(
                teacher, runner, task, start, ex, dev, dev_score=score, max_rounds=2,
                revise="targeted", confidence=0, show_progress=False,
            )  # fmt: skip
            # the same rounds (teacher and student from their caches), kept only when sure
            _, _, sure = conflict_loop(
                teacher, runner, task, start, ex, dev, dev_score=score, max_rounds=2,
                revise="targeted", confidence=0.9, show_progress=False,
            )  # fmt: skip
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
    assert rounds and rounds[0].target is not None
    gold, answered = expected[0]
    assert rounds[0].target.startswith(f"{gold} answered as {answered} (")
    targets = [r.target for r in rounds if r.target is not None]
    assert len(set(targets)) == len(targets)  # a confusion is tried once
    asked = [e["body"]["messages"][0]["content"] for e in server.log]
    assert len(asked) == len(targets) and all("whose condition holds" in a for a in asked)
    kept = [x.text for x in final[1:]]
    for r in rounds:
        assert r.rule is not None and r.rule.endswith(f"answer {r.target.split()[0]}.")
        assert (r.rule in kept) == r.accepted
        assert r.accepted == (
            r.dev_macro_f1_after is not None and r.dev_macro_f1_after > r.dev_macro_f1_before
        )
    assert final[0] == start[0] and final_score.macro_f1 >= score.macro_f1
    assert sure[0].dev_delta_ci is not None and sure[0].rule == rounds[0].rule
    for r in sure:
        if r.dev_delta_ci is not None:
            rose = r.dev_macro_f1_after is not None and r.dev_macro_f1_after > r.dev_macro_f1_before
            assert r.accepted == (rose and r.dev_delta_ci[0] > 0)
            assert r.accepted or "improved" not in r.reason
