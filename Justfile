# pld tasks. `just` runs the tests and the linters.

default: test lint

# install with test and dev tools (builds llama-cpp-python with AMX-free flags)
install:
    ./install.sh dev

# the test suite; extra arguments go to pytest (e.g. `just test -m "not model"`)
test *ARGS:
    .venv/bin/python -m pytest {{ARGS}}

lint:
    .venv/bin/ruff check runtime models bench distiller pld scripts tests
    .venv/bin/mypy runtime distiller

fix:
    .venv/bin/ruff check --fix runtime models bench pld tests
    .venv/bin/ruff format runtime models bench pld tests

# latency benchmark (about 4 minutes on 2 cores), then accuracy on a slice of each dev split
bench:
    .venv/bin/pld bench latency
    .venv/bin/pld eval --bundle stereoset --data ../shared/data/stereoset/dev.jsonl --limit 300

demo:
    .venv/bin/pld demo
