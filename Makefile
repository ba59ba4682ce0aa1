# Everything a fresh machine needs: `make quickstart` and `make test` create the virtual
# environment on first use (torch pinned to the CPU build through constraints.txt).
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install quickstart test teacher dlm mmdit-shapes mmdit-digits assets bench eval-mm report clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

quickstart: install
	$(BIN)/mmdlm generate --config configs/quickstart.yaml
	@echo "quickstart outputs: $(CURDIR)/outputs/quickstart.json"
	$(BIN)/mmdlm t2i "a large green triangle above a small red square" --n 4 --output-dir outputs/quickstart-t2i
	$(BIN)/mmdlm caption outputs/quickstart-t2i/t2i-0.png

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

# The MM-DiT on shapes (about an hour on one core).
mmdit-shapes: install
	$(BIN)/mmdlm train-mm --config configs/mmdit_shapes.yaml
	rm -rf assets/mmdit-shapes && cp -r outputs/mmdit-shapes/model assets/mmdit-shapes
	cp outputs/mmdit-shapes/run.json outputs/mmdit-shapes/log.csv outputs/mmdit-shapes/loss.png assets/mmdit-shapes/

# The MM-DiT on digits (about 25 minutes on one core).
mmdit-digits: install
	$(BIN)/mmdlm train-mm --config configs/mmdit_digits.yaml
	rm -rf assets/mmdit-digits && cp -r outputs/mmdit-digits/model assets/mmdit-digits
	cp outputs/mmdit-digits/run.json outputs/mmdit-digits/log.csv outputs/mmdit-digits/loss.png assets/mmdit-digits/

assets: teacher dlm mmdit-shapes mmdit-digits

# Image-text evaluation of the shipped multimodal checkpoints (bench/results/imagetext.json, README table).
eval-mm: install
	$(BIN)/mmdlm eval-mm --model assets/mmdit-shapes --dataset shapes --n 256
	$(BIN)/mmdlm eval-mm --model assets/mmdit-digits --dataset digits --n 256
	$(BIN)/python bench/report.py

bench: install
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/report.py

report: install
	$(BIN)/python bench/report.py

clean:
	rm -rf $(VENV) outputs
