"""Embedders and clustering you can inspect: WordLlama (the default, shipped in its wheel),
``onnx:DIR``, the automatic eps and min_samples, and ``pld distill cluster``.

The known answer is tests/fixtures/rules/paraphrases.tsv: 8 themes an auditor in law or
content moderation would write, 6 to 8 wordings each. The ONNX graphs are built here from the
WordLlama weights with the ``onnx`` package. Nothing reaches the network: the offline tests
block sockets.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import data_file
from servers import chat_body
from sklearn.metrics import adjusted_rand_score
from typer.testing import CliRunner

from pld.distiller.backends import open_teacher
from pld.distiller.cache import ResponseCache
from pld.distiller.cluster import auto_eps, choose_settings, cluster_vectors, scaled_min_samples
from pld.distiller.embedders import OnnxEmbedder, WordLlamaEmbedder, wordllama_files
from pld.distiller.ruleset import cluster_rules, read_rules
from pld.distiller.templates import prompt
from pld.errors import DataError, TeacherError

RULES = Path(__file__).resolve().parent / "fixtures" / "rules" / "paraphrases.tsv"


def paraphrases() -> tuple[list[str], list[str]]:
    """The fixture's rules and their true groups."""
    with RULES.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [r["rule"] for r in rows], [r["group"] for r in rows]


def ari(groups: list[str], clusters: list[list[int]]) -> float:
    """Adjusted Rand index of clusters against the true groups; each noise rule is its own
    cluster (noise is not a group, so dropping rules costs)."""
    found = list(range(len(groups), 2 * len(groups)))  # singletons, unless clustered below
    for c, members in enumerate(clusters):
        for i in members:
            found[i] = c
    return float(adjusted_rand_score(groups, found))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection or resolve a name fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# ---- the default embedder recovers the known answer ------------------------------------------


def test_default_settings_recover_the_paraphrase_groups(tmp_path: Path, no_network: None) -> None:
    texts, groups = paraphrases()
    found = cluster_rules(texts, cache=ResponseCache(tmp_path / "c"))
    assert found.embedder == "wordllama"
    assert found.settings.min_samples_source == "scaled" and found.min_samples == 2
    assert found.settings.eps_source == "knee" and 0.3 < found.eps < 0.6
    score = ari(groups, found.clusters)
    assert score >= 0.7, (score, found.clusters)
    assert len(found.clusters) >= 7 and len(found.noise) <= len(texts) // 5
    # paraphrases are close and themes far apart, and the JSON summary says so
    assert 0.7 < found.median_distance == found.distances.median < 0.95
    # the paper's fixed settings leave most of these rules as noise with this embedder
    with WordLlamaEmbedder(cache=ResponseCache(tmp_path / "c")) as embedder:
        vectors = embedder.embed(texts)
    paper = cluster_vectors(vectors, eps=0.4, min_samples=6)
    assert len(paper.noise) > len(texts) / 2 and ari(groups, paper.clusters) < score


def test_wordllama_matches_the_library_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.cache/wordllama to fall back on
    monkeypatch.setenv("PLD_CACHE_DIR", str(tmp_path / "pld"))
    texts, _ = paraphrases()
    texts += ["", "naïve café, 東京: résumé"]
    embedder = open_teacher("wordllama", cache=ResponseCache(tmp_path / "c"))
    assert isinstance(embedder, WordLlamaEmbedder) and embedder._table is None  # nothing loaded
    ours = np.asarray(embedder.embed(texts))
    assert ours.shape == (len(texts), 256)
    assert np.allclose(np.linalg.norm(ours[:-2], axis=1), 1.0, atol=1e-6)
    assert not ours[-2].any()  # a text without tokens stays a zero vector, not NaN

    from wordllama import WordLlama

    # WordLlama.load() looks for the tokenizer under tokenizer/, the wheel has tokenizers/:
    # given a cache_dir holding it and disable_download, the library computes the same vectors
    weights, tokenizer = wordllama_files()
    (tmp_path / "wl" / "tokenizers").mkdir(parents=True)
    (tmp_path / "wl" / "tokenizers" / tokenizer.name).write_bytes(tokenizer.read_bytes())
    library = WordLlama.load("l2_supercat", cache_dir=tmp_path / "wl", disable_download=True)
    reference = library.embed(texts[:-2], norm=True)
    assert np.abs(ours[:-2] - reference).max() < 1e-6
    assert weights.name == "l2_supercat_256.safetensors"


def test_embeddings_are_cached_and_replayed_without_loading(tmp_path: Path) -> None:
    texts, _ = paraphrases()
    texts = texts + [t.upper() for t in texts]  # 112 texts: two batches
    cache = ResponseCache(tmp_path / "c")
    with WordLlamaEmbedder(cache=cache) as embedder:
        first = embedder.embed(texts)
        assert (cache.stats.calls, cache.stats.hits) == (2, 0)
        assert embedder.describe() == {
            "model": "wordllama-l2_supercat",
            "package": f"wordllama {embedder.version}",
        }
        with pytest.raises(TeacherError, match="embedding model and cannot chat.*--teacher"):
            embedder.chat([{"role": "user", "content": "hello"}])
    fresh = WordLlamaEmbedder(cache=ResponseCache(tmp_path / "c"))
    assert fresh.embed(texts) == first  # exactly: float32 values survive the JSON round trip
    assert (fresh.cache.stats.calls, fresh.cache.stats.hits) == (0, 2)
    assert fresh._table is None  # a cache hit loads no model
    entry = json.loads(next((tmp_path / "c").glob("*/*.json")).read_text())
    key = {k: v for k, v in entry["request"].items() if k != "input"}
    assert key == {"endpoint": "wordllama.embeddings", "config": "l2_supercat", "dim": 256,
                   "wordllama": fresh.version, "pooling": "mean-l2"}  # fmt: skip


def test_embedder_specs_and_their_errors(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c")
    with pytest.raises(TeacherError, match="'l9_nothing' is not installed.*--embedder wordllama"):
        open_teacher("wordllama:l9_nothing", cache=cache)
    for bad in ("wordllama:", "onnx:", "sentence-transformers"):
        with pytest.raises(TeacherError, match="'onnx:DIR'"):
            open_teacher(bad, cache=cache)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.onnx").write_bytes(b"")
    with pytest.raises(TeacherError, match="no tokenizer.json; --embedder onnx:DIR needs"):
        open_teacher(f"onnx:{tmp_path / 'half'}", cache=cache)


# ---- the ONNX path -----------------------------------------------------------------------------


def build_onnx_embedder(directory: Path, *, pooled: bool) -> Path:
    """WordLlama as an ONNX graph: token embedding lookup (Gather), then either the masked
    mean and L2 normalisation in the graph (output ``[batch, dim]``) or nothing more (token
    states ``[batch, seq, dim]``, pooled by the embedder), beside a ``tokenizer.json``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.numpy import load_file

    weights, tokenizer = wordllama_files()
    table = load_file(str(weights))["embedding.weight"]  # float16, as shipped
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    inputs = [ids, mask]
    initializers = [numpy_helper.from_array(table, "table16")]
    nodes = [
        helper.make_node("Cast", ["table16"], ["table"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["table", "input_ids"], ["states"], axis=0),
    ]
    if pooled:
        initializers += [
            numpy_helper.from_array(np.array([1], np.int64), "seq_axis"),
            numpy_helper.from_array(np.array([2], np.int64), "dim_axis"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        ]
        nodes += [
            helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["maskf", "dim_axis"], ["mask3"]),
            helper.make_node("Mul", ["states", "mask3"], ["masked"]),
            helper.make_node("ReduceSum", ["masked", "seq_axis"], ["total"], keepdims=0),
            helper.make_node("ReduceSum", ["maskf", "seq_axis"], ["count"], keepdims=1),
            helper.make_node("Max", ["count", "one"], ["count1"]),
            helper.make_node("Div", ["total", "count1"], ["mean"]),
            helper.make_node("LpNormalization", ["mean"], ["sentence_embedding"], axis=1, p=2),
        ]
        out = helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", 256])
    else:  # a BERT-like signature: token_type_ids are fed too
        inputs.append(
            helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["batch", "seq"])
        )
        nodes.append(helper.make_node("Identity", ["states"], ["last_hidden_state"]))
        out = helper.make_tensor_value_info(
            "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", 256]
        )
    graph = helper.make_graph(nodes, "wordllama", inputs, [out], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    directory.mkdir(parents=True)
    onnx.save(model, str(directory / "model.onnx"))
    # WordLlama encodes without special tokens; here the tokenizer itself adds none
    config = json.loads(tokenizer.read_text(encoding="utf-8"))
    config["post_processor"] = None
    (directory / "tokenizer.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def few_hundred_texts() -> list[str]:
    """The fixture's rules, the stereoset fixture's sentences and LogiQA sentences: 300 texts
    of 1 to 60 words, with an empty one and non-ASCII ones."""
    texts, _ = paraphrases()
    for name in ("train", "dev"):
        for line in data_file("stereoset", name).read_text(encoding="utf-8").splitlines():
            texts.append(json.loads(line)["text"].rsplit("Sentence: ", 1)[-1])
    for line in data_file("logiqa", "train").read_text(encoding="utf-8").splitlines():
        texts += [s.strip() for s in json.loads(line)["text"].split(". ") if s.strip()]
    return [*texts[:297], "", "Ein Vertrag unterliegt deutschem Recht.", "naïve café, 東京"]


def test_onnx_path_equals_the_wordllama_path(tmp_path: Path, no_network: None) -> None:
    texts = few_hundred_texts()
    assert len(texts) == 300
    reference = np.asarray(WordLlamaEmbedder(cache=ResponseCache(tmp_path / "w")).embed(texts))
    for pooled in (True, False):
        folder = build_onnx_embedder(tmp_path / f"pooled-{pooled}", pooled=pooled)
        cache = ResponseCache(tmp_path / f"o-{pooled}")
        with open_teacher(f"onnx:{folder}", cache=cache) as embedder:
            assert isinstance(embedder, OnnxEmbedder)
            vectors = np.asarray(embedder.embed(texts))
            assert embedder.describe()["package"].startswith("onnxruntime ")
        assert np.abs(vectors - reference).max() < 1e-5, pooled
        again = OnnxEmbedder(folder, cache=ResponseCache(tmp_path / f"o-{pooled}"))
        assert again.embed(texts) == vectors.tolist()
        assert (again.cache.stats.calls, again.cache.stats.hits) == (0, 5)  # 5 batches of 64
        assert again._session is None  # replayed without starting onnxruntime


# ---- eps and min_samples ------------------------------------------------------------------------


def test_min_samples_scales_with_the_number_of_rules() -> None:
    assert [scaled_min_samples(n) for n in (0, 24, 56, 60, 99, 100, 120, 5000)] == [
        2, 2, 2, 3, 4, 5, 6, 6,
    ]  # fmt: skip
    given = choose_settings([[1.0, 0.0]] * 4, eps=0.3, min_samples=4)
    assert (given.eps, given.min_samples, given.eps_source, given.min_samples_source) == (
        0.3, 4, "given", "given",
    )  # fmt: skip
    assert "eps 0.3 (given); min_samples 4 (given)" == given.describe()


def test_auto_eps_finds_the_knee_and_guards_its_ends() -> None:
    rng = np.random.default_rng(0)
    # 6 tight groups of 8 around random directions in 64 dimensions, and 6 lone rules
    centres = rng.normal(size=(12, 64))
    tight = [c + rng.normal(0, 0.15, 64) for c in centres[:6] for _ in range(8)]
    x = np.asarray(tight + list(centres[6:]))
    eps, source, reason = auto_eps(x, 2)
    assert source == "knee" and "1st nearest neighbour" in reason
    groups = cluster_vectors(x, eps=eps, min_samples=2)
    assert groups.sizes == [8] * 6 and groups.noise == list(range(48, 54))
    # unrelated rules only (random directions in 512 dimensions, all about 1 apart): the
    # k-distance curve is flat, and the cap keeps eps below the distance of unrelated rules
    flat = rng.normal(size=(40, 512))
    eps, source, _ = auto_eps(flat, 3)
    assert source == "cap" and cluster_vectors(flat, eps=eps, min_samples=3).clusters == []
    # too few rules for a curve: the paper's value
    assert auto_eps(x[:2], 2)[:2] == (0.4, "default")


# ---- pld distill cluster ---------------------------------------------------------------------


def test_cli_cluster_in_process_and_as_a_user_types_it(tmp_path: Path) -> None:
    from pld.cli import app

    texts, groups = paraphrases()
    rules = tmp_path / "rules.txt"
    rules.write_text("\n".join(texts[:20]) + "\n\n" + "\n".join(texts[20:]) + "\n")
    lines = [i for i, line in enumerate(rules.read_text().splitlines()) if line]
    truth = {i: groups[n] for n, i in enumerate(lines)}  # line 20 is blank: not a rule
    args = ["distill", "cluster", str(rules), "--cache-dir", str(tmp_path / "c"), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = result.output.strip().splitlines()
    summary = json.loads(out[-1])
    assert {"clusters", "noise", "median_distance", "eps", "min_samples", "embedder"} <= set(
        summary
    )
    assert summary["embedder"] == "wordllama" and summary["min_samples"] == 2
    indices = sorted(i for c in summary["clusters"] for i in c) + summary["noise"]
    assert sorted(indices) == lines
    score = adjusted_rand_score(
        [truth[i] for i in lines],
        [next((c for c, m in enumerate(summary["clusters"]) if i in m), 100 + i) for i in lines],
    )
    assert score >= 0.7
    assert out[0] == f"{len(texts)} rules, embedder wordllama"
    assert out[1].startswith("pairwise cosine distances (1540 pairs): min ")
    assert out[2].startswith(f"DBSCAN: eps {summary['eps']:g} (knee of the sorted distances")
    first = summary["clusters"][0]
    assert f"cluster 1: {len(first)} rules" in out and f"  [{first[0]}] {rules.read_text().splitlines()[first[0]]}" in out  # fmt: skip

    # the same command as a user types it, with every socket refused and an empty home
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import socket\n"
        "def refuse(*a, **k):\n    raise OSError('network access attempted')\n"
        "socket.socket.connect = refuse\nsocket.create_connection = refuse\n"
        "socket.getaddrinfo = refuse\n"
    )
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "HOME": str(tmp_path / "home"),
           "PLD_CACHE_DIR": str(tmp_path / "pld")}  # fmt: skip
    pld = Path(sys.executable).parent / "pld"
    done = subprocess.run(
        [str(pld), "distill", "cluster", str(rules), "--eps", "0.5", "--min-samples", "3"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert (line["eps"], line["min_samples"], line["eps_source"]) == (0.5, 3, "given")
    assert list(Path(tmp_path / "pld" / "teacher-cache").glob("*/*.json"))  # cached there
    # still a pipeline: `pld distill` with options and no command asks for what is missing
    result = CliRunner().invoke(app, ["distill", "--task", "stereoset"])
    assert result.exit_code == 2 and "Missing option '--train', '--dev'" in result.output


def test_rules_read_back_from_a_runs_cache(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "run")
    ask = prompt("extract", description="D.", labels="- a: x", input_format="f", input="one",
                 label="a")  # fmt: skip
    other = prompt("extract", description="D.", labels="- a: x", input_format="f", input="two",
                   label="a")  # fmt: skip
    user = [{"role": "user", "content": ask}]
    good = json.dumps({"rationale": "r", "rule": "A post that threatens a person is a threat."})
    cache.put({"endpoint": "chat.completions", "messages": user}, chat_body("no JSON here"))
    cache.put(  # the repair of that reply
        {"endpoint": "chat.completions", "messages": [*user, {"role": "assistant", "content":
         "no JSON here"}, {"role": "user", "content": "That reply cannot be used"}]},
        chat_body(good),
    )  # fmt: skip
    cache.put(
        {"endpoint": "local.chat", "messages": [{"role": "user", "content": other}]},
        chat_body(json.dumps({"rationale": "r", "rule": "Spam links are spam posts."})),
    )
    cache.put({"endpoint": "embeddings", "input": ["x"]}, {"data": []})
    cache.put(
        {"endpoint": "chat.completions", "messages": [{"role": "user", "content": "Merge."}]},
        chat_body(good),
    )
    assert read_rules(tmp_path / "run") == [
        (0, "A post that threatens a person is a threat."),
        (1, "Spam links are spam posts."),
    ]
    with pytest.raises(DataError, match="holds no extraction reply"):
        read_rules(tmp_path)


# ---- the pipeline says what it used ------------------------------------------------------------


def test_provenance_describes_the_embedder(tmp_path: Path) -> None:
    from pld.distiller.provenance import describe_backend as _describe

    embedder = WordLlamaEmbedder(cache=ResponseCache(tmp_path))
    assert _describe(embedder, "wordllama", "embedder") == {
        "backend": "wordllama",
        "model": "wordllama-l2_supercat",
        "spec": "wordllama",
        "package": f"wordllama {embedder.version}",
    }
    assert _describe(embedder, "wordllama", "teacher") == {
        "backend": "wordllama",
        "model": "wordllama-l2_supercat",
    }
