# The two commands: `make run` (the whole platform on this machine) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(shell find proto -name '*.proto')
GEN_STAMP := gen/.generated

.PHONY: run test setup proto bytecode bench-spine bench-accounts bench-review bench-dispatch bench-dispatch-nats bench-grpc-floor bench-nats-floor bench-petition clean

setup: $(STAMP) $(GEN_STAMP) bytecode

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	@# The repository and the generated code are importable from the venv.
	@echo "$(CURDIR)" > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/govmedia.pth
	@echo "$(CURDIR)/gen" >> $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/govmedia.pth
	@printf '#!/bin/sh\nexec "%s/$(PY)" -m govmedia_cli "$$@"\n' "$(CURDIR)" > $(VENV)/bin/govmedia && chmod +x $(VENV)/bin/govmedia
	@touch $@

$(GEN_STAMP): $(PROTOS) $(STAMP)
	@rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -I proto --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)
	@touch $@

proto: $(GEN_STAMP)

# Compiled once here (only what changed): where PYTHONDONTWRITEBYTECODE is set, every service
# process started (hundreds in the test suite) would otherwise compile the sources again.
bytecode: $(STAMP) $(GEN_STAMP)
	@$(PY) -m compileall -q services govmedia_kit govmedia_cli gen tests bench

run: setup
	$(PY) -m govmedia_cli up

test: setup
	$(PY) -m pytest -q -x -n 3 --dist loadfile --durations=15

bench-spine: setup
	$(PY) bench/spine.py

bench-accounts: setup
	$(PY) bench/accounts.py

bench-review: setup
	$(PY) bench/review.py

bench-dispatch: setup
	$(PY) bench/dispatch.py

# Delivery mode nats alone: 10,000 clients on one nats-server, then 30,000 on a local three-node cluster.
bench-dispatch-nats: setup
	$(PY) bench/dispatch.py --modes nats --clients 10000
	$(PY) bench/dispatch.py --modes nats --clients 30000 --nats-nodes 3

bench-grpc-floor: setup
	$(PY) bench/grpc_floor.py

bench-nats-floor: setup
	$(PY) bench/nats_floor.py --clients 10000
	$(PY) bench/nats_floor.py --clients 30000 --nodes 3

bench-petition: setup
	$(PY) bench/petition.py

clean:
	rm -rf $(VENV) gen data .run
