# Everything a fresh machine needs: `make quickstart` and `make test` create the virtual
# environment on first use (torch pinned to the CPU build through constraints.txt).
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install quickstart test teacher dlm assets bench report study study-quick clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

quickstart: install
	$(BIN)/mmdlm generate --config configs/quickstart.yaml
	@echo "quickstart outputs: $(CURDIR)/outputs/quickstart.json"

test: install
	$(BIN)/python -m pytest -q

# Rebuild the shipped checkpoints (about 25 + 15 minutes on 2 cores).
teacher: install
	$(BIN)/mmdlm pretrain --config configs/teacher.yaml
	rm -rf assets/teacher && cp -r outputs/teacher/model assets/teacher
	cp outputs/teacher/run.json outputs/teacher/log.csv outputs/teacher/loss.png assets/teacher/

dlm: install
	$(BIN)/mmdlm adapt --config configs/dlm.yaml
	rm -rf assets/dlm && cp -r outputs/dlm/model assets/dlm
	cp outputs/dlm/run.json outputs/dlm/log.csv outputs/dlm/loss.png assets/dlm/

assets: teacher dlm

bench: install
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/report.py

# The adaptation study (about 1.5 hours on 2 otherwise idle cores; reuses finished runs when
# re-run): bench/results/adaptation_study.{json,png}, then the README section. Passive OpenMP
# waiting keeps two threads from spinning against other jobs on a shared machine.
study: install
	OMP_WAIT_POLICY=PASSIVE TQDM_MININTERVAL=30 $(BIN)/mmdlm study --config configs/study.yaml
	$(BIN)/python bench/report.py

# Its smoke test (a minute or two; CI can run it): tiny runs, results under outputs/study-quick/.
study-quick: install
	OMP_WAIT_POLICY=PASSIVE $(BIN)/mmdlm study --config configs/study.yaml --quick

report: install
	$(BIN)/python bench/report.py

clean:
	rm -rf $(VENV) outputs
