"""`pld bench compare`: the real contenders on a short shipped bundle, and its small pure parts.

Each model test is one short real run (2 inputs, 1 repeat) through the CLI; the llama-server
test runs only where scripts/build_llama_server.sh has built the binary (CI does not).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import data_file
from typer.testing import CliRunner

from pld.bench.chat import (
    EOS,
    chat_template,
    completion_prompt,
    first_token_label,
    label_grammar,
    match_label,
    user_message,
)
from pld.bench.compare import CONTENDERS, LOGPROBS, SERVERS, default_server_bin, run_compare
from pld.bench.compare_summary import Tally, format_compare, summarize
from pld.bench.compare_types import CompareResult, RequestRecord
from pld.bench.contenders import LogprobsContender, PldContender
from pld.bench.llama_server import LABEL_BIAS, ServerConfig, read_first_token
from pld.bench.worker_protocol import Reply, SlotReply, WorkerSpec
from pld.cli import app
from pld.errors import ConfigError, DataError, PldError
from pld.paths import cache_dir
from pld.runtime import load_bundle, shipped_bundles

runner = CliRunner()
RATIOS = CONTENDERS[2:]  # every contender but pld and pld_batched has a vs_NAME


def test_match_label_takes_the_longest_label_or_a_unique_cut_off_one() -> None:
    labels = ["stereotype", "anti-stereotype", "unrelated"]
    assert match_label(" anti-stereotype\n", labels) == "anti-stereotype"
    assert match_label("Stereotype, because", labels) == "stereotype"
    assert match_label("unrel", labels) == "unrelated"  # cut off by max_tokens
    assert match_label("You judge a sentence", labels) is None
    assert match_label("", labels) is None
    assert match_label("A", ["A", "AB"]) == "A"


def test_label_grammar_is_valid_gbnf_and_escapes_quotes() -> None:
    from llama_cpp.llama_grammar import LlamaGrammar

    gbnf = label_grammar(['say "yes"', "no\\"])
    assert gbnf == r'root ::= "say \"yes\"" | "no\\"'
    LlamaGrammar.from_string(gbnf, verbose=False)  # raises on a malformed grammar


def test_chat_templates_are_package_data_and_render_the_system_prompt() -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    messages: Any = [
        {"role": "system", "content": "SYSTEM"},
        {"role": "user", "content": user_message("TEXT")},
    ]
    for chat_format, (bos, eos) in EOS.items():
        formatter = Jinja2ChatFormatter(template=chat_template(chat_format), eos_token=eos,
                                        bos_token=bos)  # fmt: skip
        prompt = formatter(messages=messages).prompt
        assert prompt.index("SYSTEM") < prompt.index("Input:\nTEXT"), chat_format
    with pytest.raises(ConfigError, match="no chat template"):
        chat_template("llama-2")


def test_llama_server_command_line_and_slot_reply() -> None:
    config = ServerConfig(model_path="m.gguf", template_file=Path("t.jinja"), n_ctx=512,
                          threads=2, gpu_layers=0, swa_full=True, slot_dir=Path("slots"))  # fmt: skip
    assert config.args("llama-server", 8081) == [
        "llama-server", "-m", "m.gguf", "--host", "127.0.0.1", "--port", "8081", "-c", "512",
        "-np", "1", "-t", "2", "-tb", "2", "-ngl", "0", "--jinja", "--chat-template-file",
        "t.jinja", "--slot-save-path", "slots", "--swa-full",
    ]  # fmt: skip
    # the fields of llama-server's /slots reply that are read; the others are ignored
    reply = {"id_slot": 0, "filename": "x.bin", "n_restored": 180, "n_read": 9000,
             "timings": {"restore_ms": 3.5}}  # fmt: skip
    slot = msgspec.convert(reply, SlotReply)
    assert slot.n_restored == 180 and slot.timings["restore_ms"] == 3.5


def _top(tok: int, text: str, prob: float) -> dict[str, Any]:
    return {"id": tok, "token": text, "bytes": list(text.encode()), "prob": prob}


def test_llama_server_completion_reply_gives_the_label_of_the_best_first_token() -> None:
    labels, firsts = ["entailment", "contradiction", "not_mentioned"], [533, 226770, 2217]
    # /completion with the labels' first tokens biased by LABEL_BIAS, top_k 3 and
    # post_sampling_probs, as llama.cpp's server answers it (server-task.cpp:
    # probs_vector_to_json; server-common.cpp: the slot's timings); the sampled token is "ent"
    reply = {
        "index": 0, "content": "ent", "tokens": [], "id_slot": 0, "stop": True,
        "model": "gemma", "tokens_predicted": 1, "tokens_evaluated": 606,
        "generation_settings": {"n_probs": 3, "logit_bias": [[533, LABEL_BIAS]]},
        "prompt": "...", "has_new_line": False, "truncated": False, "stop_type": "limit",
        "stopping_word": "", "tokens_cached": 606,
        "timings": {"cache_n": 595, "prompt_n": 11, "prompt_ms": 40.5,
                    "prompt_per_token_ms": 3.7, "prompt_per_second": 271.6, "predicted_n": 1,
                    "predicted_ms": 0.1, "predicted_per_token_ms": 0.1,
                    "predicted_per_second": 10000.0},
        "completion_probabilities": [{
            **_top(533, "ent", 0.3),
            "top_probs": [_top(2217, "not", 0.6), _top(533, "ent", 0.3),
                          _top(226770, "contr", 0.1)],
        }],
    }  # fmt: skip
    r = read_first_token(reply, labels, firsts, ms=42.0)
    assert r.labels == ["not_mentioned"] and r.texts == ["ent"] and r.ms == 42.0
    assert r.prompt_tokens == [606] and r.completion_tokens == 1
    assert (r.evaluated, r.cache_n, r.server_prompt_ms) == (11, 595, 40.5)
    # a label left out (or given probability 0) is outscored by every one kept
    kept = {**reply["completion_probabilities"][0],
            "top_probs": [_top(533, "ent", 0.7), _top(3048, "You", 0.3),
                          _top(2217, "not", 0.0)]}  # fmt: skip
    assert read_first_token({**reply, "completion_probabilities": [kept]}, labels, firsts,
                            ms=1.0).labels == ["entailment"]  # fmt: skip
    only_you = {**kept, "top_probs": [_top(3048, "You", 1.0)]}
    assert read_first_token({**reply, "completion_probabilities": [only_you]}, labels, firsts,
                            ms=1.0).labels == [None]  # fmt: skip
    with pytest.raises(PldError, match="not understood"):
        read_first_token({**reply, "completion_probabilities": []}, labels, firsts, ms=1.0)
    assert first_token_label({1: -1.0, 2: -1.0}, ["a", "b"], [1, 2]) == "a"  # a tie: the first


def _tally(name: str, ms: list[float], **kw: Any) -> Tally:
    t = Tally(name, cap=len(ms), ms=ms, labels=dict.fromkeys(range(len(ms)), "a"), **kw)
    reply = Reply(ms=0.0, labels=["a"], texts=["a"], prompt_tokens=[100], evaluated=10)
    t.records = [RequestRecord.of(i, 0, msgspec.structs.replace(reply, ms=x)) for i, x in
                 enumerate(ms)]  # fmt: skip
    return t


def test_summary_keys_say_what_ran_and_why_not() -> None:
    tally = {name: Tally(name, reason="skipped (--skip)") for name in CONTENDERS}
    tally["pld"] = _tally("pld", [10.0, 20.0], cold_ms=50.0)
    tally["chat_completion"] = _tally("chat_completion", [40.0, 80.0], cold_reason="it failed")
    result = summarize(tally, bundle="b", model="m", prefix_tokens=100, requests=2, repeats=1,
                       distinct=True, threads=1, grammar=True, batch_size=8, inputs=["x", "y"])  # fmt: skip
    line = json.loads(msgspec.json.encode(result.line()))
    assert "per_request" not in line and set(line["contenders"]) == set(CONTENDERS)
    assert line["vs_chat_completion"] == 4.0 and "vs_chat_completion_reason" not in line
    assert line["vs_llama_server"] is None and line["vs_llama_server_reason"] == "skipped (--skip)"
    assert line["pld_batched_per_request_ms"] is None and line["pld_batched_per_request_ms_reason"]
    pld, chat, skipped = (line["contenders"][n] for n in ("pld", "chat_completion", "llama_server"))
    assert list(skipped) == ["ran", "reason", "cold_start_ms", "cold_start_reason", "settings"]
    assert "paired_ratio_p50" not in pld and chat["paired_ratio_p50"] == 4.0
    assert pld["cold_start_ms"] == 50.0 and "cold_start_reason" not in pld
    assert chat["cold_start_ms"] is None and chat["cold_start_reason"] == "it failed"
    assert "cache_n" not in json.loads(msgspec.json.encode(result))["per_request"]["pld"][0]
    assert msgspec.json.decode(msgspec.json.encode(result), type=CompareResult) == result
    table = format_compare(result)
    assert "chat_completion" in table and "4.0x" in table and "llama_server: skipped" in table


def test_bad_options_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pld is the reference"):
        run_compare(bundle="stereoset", skip=["pld"])
    with pytest.raises(ConfigError, match="--skip takes"):
        run_compare(bundle="stereoset", skip=["ollama"])
    short = tmp_path / "two.jsonl"
    short.write_text('{"text": "a"}\n{"text": "b"}\n')
    with pytest.raises(DataError, match="needs at least 4"):
        run_compare(bundle="stereoset", data=short, requests=2)


def _run(tmp_path: Path, *args: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """`pld bench compare` on the stereoset bundle; returns the JSON line, the --json-out file
    and the table."""
    out_file = tmp_path / "compare.json"
    res = runner.invoke(
        app,
        [
            "bench",
            "compare",
            "--bundle",
            str(shipped_bundles()["stereoset"]),
            "--data",
            str(data_file("stereoset")),
            "--requests",
            "2",
            "--repeats",
            "1",
            "--json-out",
            str(out_file),
            *args,
        ],
    )
    assert res.exit_code == 0, res.output
    last = json.loads(res.stdout.strip().splitlines()[-1])
    return last, json.loads(out_file.read_text()), res.stdout


def _check_ratios(line: dict[str, Any]) -> None:
    for name in RATIOS:
        c = line["contenders"][name]
        if c["ran"]:
            expected = c["p50_ms"] / line["pld_p50_ms"]
            assert math.isclose(line[f"vs_{name}"], expected, rel_tol=0.02, abs_tol=0.01), name
        else:
            assert line[f"vs_{name}"] is None and line[f"vs_{name}_reason"]


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_compare_runs_every_in_process_contender_and_explains_a_missing_server(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-such-llama-server"
    line, full, table = _run(tmp_path, "--server-bin", str(missing))
    assert "chat_completion_cached" in table and "vs pld" in table
    for key in ("pld_p50_ms", "pld_batched_per_request_ms", "cold_start_ms"):
        assert line[key] is not None, key
    assert line["pld_p50_ms"] == line["contenders"]["pld"]["p50_ms"] > 0
    assert "per_request" not in line and set(line["contenders"]) == set(CONTENDERS)
    _check_ratios(line)
    for name in SERVERS:
        assert line[f"vs_{name}"] is None
        assert str(missing) in line[f"vs_{name}_reason"]
        assert "build_llama_server.sh" in line[f"vs_{name}_reason"]

    labels = load_bundle(shipped_bundles()["stereoset"]).labels
    pld_records = full["per_request"]["pld"]
    pld_label = {r["input"]: r["label"] for r in pld_records}
    for name in ("chat_completion", "chat_completion_cached"):
        c, records = line["contenders"][name], full["per_request"][name]
        assert c["ran"] and c["n"] == len(records) == 2
        for r in records:
            # the label is read from the text the model really generated (grammar-limited)
            assert r["text"] and r["label"] == match_label(r["text"], labels) is not None
            # the same prompt as pld's, token for token in length
            assert r["prompt_tokens"] == next(
                p["prompt_tokens"] for p in pld_records if p["input"] == r["input"]
            )
            # the Llama matched the previous prompt's prefix: far less than the whole prompt
            assert 0 < r["evaluated"] < r["prompt_tokens"] / 2
        agree = [r["label"] == pld_label[r["input"]] for r in records]
        assert c["label_agreement"] == round(sum(agree) / len(agree), 3)
        assert c["warmup_evaluated"][0] > c["warmup_evaluated"][1]
    # one token after the same prompt, its label read from the first token's logits (the
    # stereoset bundle is calibrated, so its labels need not be pld's: see the test below)
    c, records = (
        line["contenders"]["chat_completion_logprobs"],
        full["per_request"]["chat_completion_logprobs"],
    )
    assert c["ran"] and c["n"] == len(records) == 2 and c["valid_labels"] == 1.0
    for r in records:
        assert r["completion_tokens"] == 1 and r["label"] in labels
        assert r["prompt_tokens"] == next(
            p["prompt_tokens"] for p in pld_records if p["input"] == r["input"]
        )
        assert 0 < r["evaluated"] < r["prompt_tokens"] / 2
    assert c["label_agreement"] is not None and c["cold_start_reason"]
    cs = line["contenders"]
    assert cs["pld"]["cold_start_ms"] > 0 and cs["chat_completion"]["cold_start_ms"] > 0
    assert line["cold_start_ms"]["pld"] == cs["pld"]["cold_start_ms"]
    # pld restores its saved prefix and evaluates only the input; the chat path has nothing
    # to restore and evaluates the whole prompt (the cold start answers input 0)
    first = next(p for p in pld_records if p["input"] == 0)
    assert cs["pld"]["cold_start"]["evaluated"] == first["evaluated"]
    assert cs["chat_completion"]["cold_start"]["evaluated"] == first["prompt_tokens"]
    assert (
        cs["pld_batched"]["cold_start_reason"] and cs["chat_completion_cached"]["cold_start_reason"]
    )
    assert cs["pld"]["peak_rss_mb"] > 0 and cs["chat_completion_cached"]["peak_rss_mb"] > 0


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_llama_server_contenders_report_what_the_server_evaluated(tmp_path: Path) -> None:
    # the tests keep pld's cache in a temporary PLD_CACHE_DIR: look where the build script put
    # the binary (or at PLD_LLAMA_SERVER)
    home_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pld"
    where = os.environ.get("PLD_LLAMA_SERVER")
    binary = Path(where) if where else home_cache / default_server_bin().relative_to(cache_dir())
    if not binary.is_file():
        pytest.skip(f"no llama-server at {binary}; build it with scripts/build_llama_server.sh")
    skip = "pld_batched,chat_completion,chat_completion_cached,chat_completion_logprobs"
    line, full, _ = _run(tmp_path, "--skip", skip, "--server-bin", str(binary))
    _check_ratios(line)
    labels = load_bundle(shipped_bundles()["stereoset"]).labels
    pld_prompt = {r["input"]: r["prompt_tokens"] for r in full["per_request"]["pld"]}
    for name in SERVERS:
        c = line["contenders"][name]
        assert c["ran"], c.get("reason")
        for r in full["per_request"][name]:
            assert r["prompt_tokens"] == pld_prompt[r["input"]]  # the same prompt as pld's
            assert r["evaluated"] + r["cache_n"] == r["prompt_tokens"]  # its own timings
            if name in LOGPROBS:  # one token, sampled among the labels' first tokens only:
                # the label from their probabilities, always one (Gemma-3 270M base ranks words
                # like "You" first, which the first run without the bias met)
                assert r["completion_tokens"] == 1 and r["label"] in labels
            else:
                assert r["label"] == match_label(r["text"], labels) is not None
        assert c["peak_rss_mb"] > 0
        if name in LOGPROBS:
            assert c["cold_start_ms"] is None and c["cold_start_reason"]
        else:
            assert c["cold_start_ms"] > 0 and c["cold_start"]["restored_tokens"] > 0


@pytest.mark.model
@pytest.mark.slow
def test_first_token_logprobs_agree_with_pld_on_in_domain_inputs() -> None:
    # Contract-NLI inputs with the Contract-NLI bundle (uncalibrated: pld's label is the best
    # first token's), the three shortest of the fixture to keep it quick
    bundle = str(shipped_bundles()["contractnli"])
    rows = [json.loads(line) for line in data_file("contractnli").read_text().splitlines()]
    texts = sorted((r["text"] for r in rows), key=len)[:3]
    pld = PldContender(WorkerSpec(kind="pld", bundle=bundle, threads=2))
    info = pld.info(0.0)
    spec = WorkerSpec(kind="chat_completion_logprobs", bundle=bundle, threads=2, n_ctx=2048,
                      max_tokens=1)  # fmt: skip
    lp = LogprobsContender(spec)
    assert lp.first_tokens == info.label_first_tokens and not info.calibrated
    for i, text in enumerate(texts):
        # token for token the prompt pld evaluates (the endpoint adds the BOS)
        prompt = completion_prompt(info.chat_format, info.system_prompt, text)
        tokens = lp.llm.tokenize(prompt.encode(), add_bos=True, special=True)
        assert tokens == list(pld.clf.prefix_tokens) + pld.clf.request_tokens(text)[0]
        ours, theirs = pld.answer([text]), lp.answer([text])
        assert theirs.labels == ours.labels and theirs.prompt_tokens == ours.prompt_tokens
        assert theirs.completion_tokens == 1
        # the Llama kept the previous prompt's prefix: after the first, only the input's tokens
        whole = ours.prompt_tokens[0]
        assert theirs.evaluated == whole if i == 0 else 0 < theirs.evaluated < whole
