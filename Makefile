# Set-up and everyday commands. `make demo` and `make test` each work on a fresh machine
# with Python 3.11 and pip: they create .venv and install the pinned dependencies first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Label Studio, for the review loop's test: a venv of its own (its pins differ from ours).
LABEL_STUDIO ?= .venv-labelstudio
$(LABEL_STUDIO)/.installed: infra/labelstudio/requirements.txt
	$(PYTHON) -m venv $(LABEL_STUDIO)
	$(LABEL_STUDIO)/bin/python -m pip install --quiet --upgrade pip
	$(LABEL_STUDIO)/bin/python -m pip install --quiet -r infra/labelstudio/requirements.txt
	touch $@

demo: install
	$(BIN)/cracknet demo

test:
	$(MAKE) -j2 install $(LABEL_STUDIO)/.installed  # the two venvs install side by side
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The unit tests alone: no Ray, no S3 or MLflow server, no subprocess.
test-fast: install
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

bench: install
	$(BIN)/python bench/train_quality.py

clean:
	rm -rf $(VENV) $(LABEL_STUDIO) runs build *.egg-info
