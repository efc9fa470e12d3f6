# pld tasks. `just` runs the tests, which include the linters and strict mypy
# (tests/test_checks.py); `just lint` runs only those, `just test -m "not slow"` skips them.

default: test

# install with test and dev tools (builds llama-cpp-python with AMX-free flags)
install:
    ./install.sh dev

# the test suite; extra arguments go to pytest (e.g. `just test -m "not model"`)
test *ARGS:
    .venv/bin/python -m pytest {{ARGS}}

# ruff check, ruff format --check and strict mypy over every package (scripts/check.py), alone
lint:
    .venv/bin/python scripts/check.py

fix:
    .venv/bin/ruff check --fix runtime models bench evals distiller fleet serve pld scripts tests
    .venv/bin/ruff format runtime models bench evals distiller fleet serve pld scripts tests

# rewrite the committed data fixtures from ../shared/data
fixtures:
    .venv/bin/python scripts/make_fixtures.py

# latency benchmark (about 4 minutes on 2 cores), then accuracy on a slice of each dev split
bench:
    .venv/bin/pld bench latency
    .venv/bin/pld eval --bundle stereoset --data ../shared/data/stereoset/dev.jsonl --limit 300

# pld against create_chat_completion (with and without LlamaRAMCache) and llama-server, one run;
# builds llama-server from the llama.cpp sources llama-cpp-python ships (once, cached)
bench-compare *ARGS:
    .venv/bin/pld bench compare --server-bin "$(scripts/build_llama_server.sh)" {{ARGS}}

# latency against prompt length, input length and batch size; CSV + PNG under bench/results
bench-scaling *ARGS:
    .venv/bin/pld bench scaling --out bench/results {{ARGS}}

# micro-benchmarks of the hot paths (bench/micro), compared with the committed baseline: fails
# when a benchmark's fastest round is 25% slower than the baseline's (select with -k, not a path)
bench-micro *ARGS:
    .venv/bin/python -m pytest bench/micro --benchmark-storage=bench/micro/baseline --benchmark-compare='*/0001_baseline' --benchmark-compare-fail=min:25% --benchmark-columns=min,mean,stddev,median,rounds --benchmark-sort=name {{ARGS}}

# replace bench-micro's baseline with a run on this machine (bench/micro/baseline)
bench-micro-save:
    rm -rf bench/micro/baseline
    .venv/bin/python -m pytest bench/micro --benchmark-storage=bench/micro/baseline --benchmark-save=baseline --benchmark-columns=min,mean,stddev,median,rounds --benchmark-sort=name

# the server's load test: clients, a pull and a rollback mid-run, overhead against in-process
bench-serve *ARGS:
    .venv/bin/python -m pld.bench.load_serve load {{ARGS}}

demo:
    .venv/bin/pld demo
