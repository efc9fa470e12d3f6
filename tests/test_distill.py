"""The distiller's parts, fast: data sampling, clustering, the prompt budget, repairs, prompt
templates, the CLI's options, errors that name the fix, and a light ``import pld.distiller``.

Whole runs with the real student are in test_distill_runs.py. The teacher here is the scripted
server of tests/servers.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import pytest
from servers import Reply, ScriptedServer, chat_body, teacher_reply
from typer.testing import CliRunner

from pld.distiller.ask import AskStats, ask_json
from pld.distiller.backends import open_teacher
from pld.distiller.cache import ResponseCache
from pld.distiller.cluster import cluster_vectors, median_distance, representatives
from pld.distiller.consolidate import fit_budget
from pld.distiller.data import Example, load_examples, load_task, stratified_sample
from pld.distiller.extract import Extraction
from pld.distiller.openai_teacher import OpenAITeacher
from pld.distiller.pipeline import Settings, distill
from pld.distiller.templates import PROMPTS, prompt, prompt_hashes
from pld.errors import ConfigError, DataError, DistillError, TeacherError
from pld.runtime.bundle import Instruction, Label, Task, render_system_prompt

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


def test_a_targeted_rule_that_copies_a_listed_rule_is_sent_back(tmp_path: Path) -> None:
    """A 1.5B teacher's first answer to the targeted prompt is one of the listed rules, word
    for word (seen in a real run); the scripted server replays that, then a new rule."""
    from pld.distiller.targeted import confusions, targeted_rule

    server = ScriptedServer()
    server.thread.start()
    rules = [Instruction(id="r1", text="If the review praises the product, answer pos."),
             Instruction(id="r2", text="If the review complains, answer neg.")]  # fmt: skip
    new = "If the review praises one part but says it broke, answer neg."
    server.push(
        Reply(200, chat_body(json.dumps({"instruction": "If the review  complains, answer neg."}))),
        Reply(200, chat_body(json.dumps({"instruction": new}))),
    )
    wrong = [
        (Example(id=f"w{i}", text=f"great but broke {i}", label="neg"), "pos") for i in range(3)
    ]
    wrong.append((Example(id="x", text="awful, loved it", label="pos"), "neg"))
    right = [(Example(id="p", text="great", label="pos"), "pos")]
    assert confusions(wrong, ["pos", "neg"]) == [("neg", "pos"), ("pos", "neg")]
    try:
        with OpenAITeacher(
            "scripted", server.url, cache=ResponseCache(tmp_path / "c"), backoff=0.01
        ) as t:
            stats = AskStats()
            got = targeted_rule(
                t, TASK, rules, ("neg", "pos"), wrong, right, max_failures=2, max_contrasts=4,
                max_input_chars=100, max_repairs=2, stats=stats, show_progress=False, label="t",
            )  # fmt: skip
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
    assert got == new and (stats.requests, stats.repaired) == (2, 1)
    asked = server.log[0]["body"]["messages"][0]["content"]
    assert (
        'answered "pos" for each of these inputs, but the correct label of each is "neg"' in asked
    )
    assert "great but broke 0" in asked and "great but broke 2" not in asked  # max_failures
    assert (
        "awful" not in asked and "Input:\ngreat\n" in asked + "\n"
    )  # the contrast, not the other confusion
    repair = server.log[1]["body"]["messages"][-1]["content"]
    assert "that is rule 2" in repair and 'still answers "pos"' in repair


# ---- prompt templates, the CLI, and what importing costs -------------------------------------


def test_prompt_templates_render_strictly_and_are_hashed() -> None:
    text = prompt("extract", description="D.", labels="- a: x", input_format="one line",
                  input="the input", label="a")  # fmt: skip
    assert "the input" in text and "$" not in text
    with pytest.raises(KeyError, match="label"):
        prompt("extract", description="D.", labels="- a: x", input_format="f", input="i")
    hashes = prompt_hashes()
    assert list(hashes) == list(PROMPTS) == ["extract", "consolidate", "revise", "target"]
    assert all(h.startswith("sha256:") and len(h) == 71 for h in hashes.values())


def test_cli_offers_its_choices_and_refuses_others(tmp_path: Path) -> None:
    import typer

    from pld.distiller import cli

    app = typer.Typer()
    app.command()(cli.distill)
    runner = CliRunner()
    help_text = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    assert "none|contextual" in help_text and "json_schema|json_object|off" in help_text
    assert "teacher-cache/ in pld's cache directory" in help_text
    common = ["--task", "stereoset", "--train", "t", "--dev", "d", "--teacher", "openai:m",
              "--out", str(tmp_path / "o.json")]  # fmt: skip
    for option, bad in (("--calibration", "sometimes"), ("--structured-output", "xml")):
        result = runner.invoke(app, [*common, option, bad])
        assert result.exit_code == 2 and f"'{bad}' is not one of" in result.output


def test_importing_the_distiller_loads_no_heavy_dependency(tmp_path: Path) -> None:
    # A device install lacks them, and `pld classify` imports the distiller's CLI module.
    # Nor do the embedders' modules, or opening the default embedder (it loads on first use).
    code = (
        "import sys, pld.distiller, pld.distiller.cli\n"
        "import pld.distiller.embedders, pld.distiller.ruleset\n"
        "from pld.distiller.backends import open_teacher\n"
        "from pld.distiller.cache import ResponseCache\n"
        "open_teacher('wordllama', cache=ResponseCache(sys.argv[1]))\n"
        "heavy = [m for m in ('httpx', 'sklearn', 'llama_cpp', 'wordllama', 'onnxruntime',\n"
        "                     'tokenizers', 'safetensors') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert sorted(pld.distiller.__all__) == pld.distiller.__all__\n"
        "from pld.distiller import Teacher, OpenAITeacher, LocalTeacher\n"
        "assert issubclass(OpenAITeacher, Teacher) and issubclass(LocalTeacher, Teacher)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


# ---- errors ----------------------------------------------------------------------------------


def test_pipeline_errors_name_the_fix(tmp_path: Path) -> None:
    train = tmp_path / "t.jsonl"
    train.write_text('{"text": "fine", "label": "great"}\n')
    with pytest.raises(DataError, match="not one of the task's labels"):
        distill(task="stereoset", train=train, dev=train, teacher="openai:x@http://127.0.0.1:9/v1",
                out=tmp_path / "o.json", cache_dir=tmp_path / "c", show_progress=False)  # fmt: skip
    with pytest.raises(TeacherError, match="local:NAME_OR_PATH"):
        open_teacher("gpt-4o", cache=ResponseCache(tmp_path / "c"))
    with pytest.raises(ConfigError, match="pass --eps"):
        cluster_vectors([[1.0, 0.0]], eps=3.0)


def test_a_run_without_clusters_stops_before_the_student_and_says_what_it_used(
    tmp_path: Path,
) -> None:
    server = ScriptedServer()
    server.responder = teacher_reply
    server.thread.start()
    train = tmp_path / "train.jsonl"
    rows = [{"text": f"sentence {i} {label}", "label": label}
            for i, label in enumerate(["stereotype", "anti-stereotype", "unrelated"] * 2)]  # fmt: skip
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = f"openai:scripted@{server.url}"
    log: list[str] = []
    try:
        with pytest.raises(DistillError, match="DBSCAN found no cluster.*--min-samples"):
            distill(task="stereoset", train=train, dev=train, teacher=spec, embedder=spec,
                    out=tmp_path / "o.json", cache_dir=tmp_path / "c", show_progress=False,
                    settings=Settings(min_samples=3), log=log.append)  # fmt: skip
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
    assert not (tmp_path / "o.json").exists()
    said = next(line for line in log if line.startswith("DBSCAN settings: "))
    assert "min_samples 3 (given)" in said
    assert re.search(r"eps 0\.7\d* \(3/4 of the median pairwise distance", said), said
    assert msgspec.to_builtins(Settings())["eps"] is None  # recorded as chosen, not as 0.4
