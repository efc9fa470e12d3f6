# pld tasks. `just` runs the tests (which include the checks) and the linters.

default: test lint

# install with test and dev tools (builds llama-cpp-python with AMX-free flags)
install:
    ./install.sh dev

# the test suite; extra arguments go to pytest (e.g. `just test -m "not model"`)
test *ARGS:
    .venv/bin/python -m pytest {{ARGS}}

# ruff check, ruff format --check and strict mypy over every package (scripts/check.py)
lint:
    .venv/bin/python scripts/check.py

fix:
    .venv/bin/ruff check --fix runtime models bench distiller fleet pld scripts tests
    .venv/bin/ruff format runtime models bench distiller fleet pld scripts tests

# rewrite the committed data fixtures from ../shared/data
fixtures:
    .venv/bin/python scripts/make_fixtures.py

# latency benchmark (about 4 minutes on 2 cores), then accuracy on a slice of each dev split
bench:
    .venv/bin/pld bench latency
    .venv/bin/pld eval --bundle stereoset --data ../shared/data/stereoset/dev.jsonl --limit 300

demo:
    .venv/bin/pld demo
