# Everything a fresh machine needs: `make quickstart` and `make test` create the virtual
# environment on first use (torch pinned to the CPU build through constraints.txt).
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# $(call staged,NAME,DATASET,STAGES[,AVERAGED]): train a multimodal model in stages, evaluate each
# stage on DATASET (bench/results/imagetext_stages.json, labels "stage 1", "stage 2", ...), then
# ship the last to assets/NAME, or with AVERAGED (some of the STAGES) the average of their weights
# (mmdlm average, into outputs/NAME-average). STAGES are config names in order (configs/STAGE.yaml,
# each writing outputs/STAGE with "_" as "-"). assets/NAME gets the pipeline and the last stage's
# run.json, log.csv and loss.png, with each earlier stage's records in assets/NAME/stage1, stage2,
# ... Assembled in assets/NAME.new, which replaces assets/NAME only once every file is there.
outputs_of = $(subst _,-,$(1))
averaged = outputs/$(1)-average
define staged
	k=1; for pair in $(join $(addsuffix :,$(3)),$(call outputs_of,$(3))); do \
	  $(BIN)/mmdlm train-mm --config configs/$${pair%%:*}.yaml && \
	  $(BIN)/mmdlm eval-mm --model outputs/$${pair#*:}/model --dataset $(2) --n 256 \
	    --label "stage $$k" --output bench/results/imagetext_stages.json || exit 1; \
	  k=$$((k + 1)); done
	$(if $(4),$(BIN)/mmdlm average --models $(patsubst %,outputs/%/model,$(call outputs_of,$(4))) --output $(call averaged,$(1)))
	$(call ship,$(1),$(call outputs_of,$(3)),$(if $(4),$(call averaged,$(1)),outputs/$(lastword $(call outputs_of,$(3)))/model))
endef
# $(call ship,NAME,STAGE_OUTPUTS,PIPELINE)
define ship
	rm -rf assets/$(1).new && cp -r $(3) assets/$(1).new
	cp $(addprefix outputs/$(lastword $(2))/,run.json log.csv loss.png) assets/$(1).new/
	k=1; for out in $(filter-out $(lastword $(2)),$(2)); do \
	  mkdir -p assets/$(1).new/stage$$k && \
	  cp outputs/$$out/run.json outputs/$$out/log.csv outputs/$$out/loss.png assets/$(1).new/stage$$k/ || exit 1; \
	  k=$$((k + 1)); done
	rm -rf assets/$(1) && mv assets/$(1).new assets/$(1)
endef

.PHONY: install browser quickstart test gpu-check gpu-wheels demo screenshot teacher dlm mmdit-shapes mmdit-digits vq \
	discrete-shapes discrete-digits assets bench eval-mm eval-lm lm-eval-tasks cards report clean sft bench-sft study \
	study-quick parity task-ar task-dlm bench-task bench-length

# DeepSpeed (the extra "scale") builds against the installed torch, without its CUDA ops.
$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet --disable-pip-version-check --no-build-isolation deepspeed
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test,eval,scale]"
	touch $(STAMP)

install: $(STAMP)

quickstart: install
	$(BIN)/mmdlm eval-task --config configs/quickstart_task.yaml
	$(BIN)/mmdlm generate --config configs/quickstart.yaml
	@echo "quickstart outputs: $(CURDIR)/outputs/quickstart.json"
	$(BIN)/mmdlm t2i "a large green triangle above a small red square" --n 4 --output-dir outputs/quickstart-t2i
	$(BIN)/mmdlm caption outputs/quickstart-t2i/t2i-0.png
	$(BIN)/mmdlm t2i "a large green triangle above a small red square" --n 4 --model assets/discrete-shapes \
		--output-dir outputs/quickstart-discrete
	$(BIN)/mmdlm caption outputs/quickstart-discrete/t2i-0.png --model assets/discrete-shapes

# Debian's Chromium for the demo's browser test (never a downloaded browser); installed with
# apt-get when missing (as root, or through sudo). MMDLM_SKIP_BROWSER=1 skips it and the test.
CHROMIUM ?= /usr/bin/chromium
export MMDLM_CHROMIUM := $(CHROMIUM)

browser:
ifneq ($(MMDLM_SKIP_BROWSER),1)
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "installing Debian's chromium for the browser test"; \
	  $$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y chromium; }
	@test -x $(CHROMIUM) || { echo "no Chromium at $(CHROMIUM) after apt-get install chromium"; exit 1; }
endif

# Tests use tiny models, for which one torch thread per process is fastest (the suite also
# starts several processes at once in its distributed tests).
test: install browser
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

# The GPU check (issue 25, bench/gpu_check.py): on a CUDA machine, the gpu tests and the throughput, MFU and
# sampling benchmarks in at most 8 minutes, nothing downloaded (the packages its image lacks come from .whl/, which
# `make gpu-wheels` fills here), results in bench/results/gpu.json (then `make report`). DEVICE=cpu runs the same
# phases at tiny sizes here (outputs/gpu-tiny.json), as the test suite does.
DEVICE ?= cuda
GPU_WHEELS := diffusers==0.42.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0
GPU_PLATFORMS := $(addprefix --platform ,manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
	manylinux2014_x86_64 manylinux1_x86_64)

gpu-check:
ifeq ($(DEVICE),cpu)
	$(MAKE) install
	OMP_NUM_THREADS=1 $(BIN)/python bench/gpu_check.py --device cpu --tiny --out outputs/gpu-tiny.json
else
	bash bench/gpu_check.sh
endif

# Wheels for the device machine's Python 3.12, which has torch, transformers, accelerate and peft but not these.
gpu-wheels: install
	rm -rf .whl && $(BIN)/pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
		--python-version 3.12 --implementation cp $(GPU_PLATFORMS) -d .whl $(GPU_WHEELS)
	@du -sh .whl && ls .whl

# The Gradio demo on http://127.0.0.1:7860 (mmdlm demo --help for its settings).
demo: install
	$(BIN)/mmdlm demo

# The README's screenshot of the demo (docs/demo.png), taken with the same headless Chromium.
screenshot: install browser
	$(BIN)/python demos/screenshot.py

# Rebuild the shipped checkpoints (about 25 + 15 minutes on 2 cores).
teacher: install
	$(BIN)/mmdlm pretrain --config configs/teacher.yaml
	rm -rf assets/teacher && cp -r outputs/teacher/model assets/teacher
	cp outputs/teacher/run.json outputs/teacher/log.csv outputs/teacher/loss.png assets/teacher/

dlm: install
	$(BIN)/mmdlm adapt --config configs/dlm.yaml
	rm -rf assets/dlm && cp -r outputs/dlm/model assets/dlm
	cp outputs/dlm/run.json outputs/dlm/log.csv outputs/dlm/loss.png assets/dlm/

# The teacher and the DLM fine-tuned on the built-in arithmetic task (mmdlm/data/arithmetic.py), the same
# examples, steps and seed for both (about 50 minutes each with two threads on an unloaded 2-core machine).
task-ar: install
	$(BIN)/mmdlm sft --config configs/task_sft_ar.yaml
	$(call ship,task-ar,task-ar,outputs/task-ar/model)

task-dlm: install
	$(BIN)/mmdlm sft --config configs/task_sft_dlm.yaml
	$(call ship,task-dlm,task-dlm,outputs/task-dlm/model)

# The race on the task's held-out problems: AR greedy against the DLM's samplers (bench/results/sampling_task.*).
bench-task: install
	$(BIN)/python bench/sampling_task.py
	$(BIN)/python bench/report.py

# Cost per generated token against length: AR, the DLM's caches, a block DLM's cache append
# (bench/results/sampling_length.*; one thread, a few minutes).
bench-length: install
	OMP_NUM_THREADS=1 $(BIN)/python bench/sampling_length.py
	$(BIN)/python bench/report.py

# The MM-DiT on shapes, in eight stages (each starts from the last one's weights; about 7 hours on one
# core); the shipped model averages the weights of the last two.
mmdit-shapes: install
	$(call staged,mmdit-shapes,shapes,mmdit_shapes $(addprefix mmdit_shapes_stage,2 3 4 5 6 7 8),mmdit_shapes_stage7 mmdit_shapes_stage8)

# The MM-DiT on digits (about 25 minutes on one core).
mmdit-digits: install
	$(BIN)/mmdlm train-mm --config configs/mmdit_digits.yaml
	rm -rf assets/mmdit-digits && cp -r outputs/mmdit-digits/model assets/mmdit-digits
	cp outputs/mmdit-digits/run.json outputs/mmdit-digits/log.csv outputs/mmdit-digits/loss.png assets/mmdit-digits/

# Image-text evaluation of the shipped multimodal checkpoints (bench/results/imagetext.json, README table),
# at the default steps and, for shapes, at more (40 for the MM-DiT, 64 for the discrete backbone:
# one code per step); shapes on 1,024 held-out samples, so that a figure's standard error is about a point.
eval-mm: install
	$(BIN)/mmdlm eval-mm --model assets/mmdit-shapes --dataset shapes --n 1024
	$(BIN)/mmdlm eval-mm --model assets/mmdit-digits --dataset digits --n 256
	$(BIN)/mmdlm eval-mm --model assets/discrete-shapes --dataset shapes --n 1024
	$(BIN)/mmdlm eval-mm --model assets/discrete-digits --dataset digits --n 256
	$(BIN)/mmdlm eval-mm --model assets/mmdit-shapes --dataset shapes --n 1024 --steps 40 --label "40 steps"
	$(BIN)/mmdlm eval-mm --model assets/discrete-shapes --dataset shapes --n 1024 --steps 64 --label "64 steps"
	$(BIN)/python bench/report.py

# lm-evaluation-harness on the shipped tasks (mmdlm/eval/lm_tasks): the AR teacher (lm-eval's hf), the DLM
# (lm-eval model mmdlm) and the DLM with token editing on the generation task; bench/results/lm_eval.json,
# then the table in docs/results-text.md (about 10 minutes on 2 shared cores).
eval-lm: install
	$(BIN)/mmdlm eval-lm --model assets/teacher --label "AR teacher"
	$(BIN)/mmdlm eval-lm --model assets/dlm --label "DLM" --model-args elbo_grid=8,elbo_replicates=1
	$(BIN)/mmdlm eval-lm --model assets/dlm --label "DLM, token editing 0.9" --tasks mmdlm_stdlib_line \
		--model-args editing_threshold=0.9
	$(BIN)/mmdlm eval-lm --model assets/dlm --label "DLM, token editing 0.5" --tasks mmdlm_stdlib_line \
		--model-args editing_threshold=0.5
	$(BIN)/python bench/report.py

# Model cards (README.md) and diffusers' loader file (pipeline.py) of the shipped checkpoints, from their
# run.json and log.csv (what every save and training run writes by itself now).
cards: install
	$(BIN)/python bench/cards.py

# The shipped tasks' data, from this Python's standard library (held-out files of the built-in corpus).
lm-eval-tasks: install
	$(BIN)/python -c "from mmdlm.eval.lm_tasks import build; build()"

# The discrete backbone: its VQ image tokenizer, then the transformer on shapes and on digits.
vq: install
	$(BIN)/mmdlm train-vq --config configs/vq.yaml
	rm -rf assets/vq && cp -r outputs/vq/model assets/vq
	cp outputs/vq/run.json outputs/vq/log.csv outputs/vq/loss.png outputs/vq/reconstruction.json assets/vq/

# The discrete backbone on shapes, in six stages (stages 1-5 about 6.5 hours on one core, stage 6 about
# an hour with two threads).
discrete-shapes: install
	$(call staged,discrete-shapes,shapes,discrete_shapes $(addprefix discrete_shapes_stage,2 3 4 5 6))

discrete-digits: install
	$(BIN)/mmdlm train-mm --config configs/discrete_digits.yaml
	rm -rf assets/discrete-digits && cp -r outputs/discrete-digits/model assets/discrete-digits
	cp outputs/discrete-digits/run.json outputs/discrete-digits/log.csv outputs/discrete-digits/loss.png \
		assets/discrete-digits/

assets: teacher dlm task-ar task-dlm mmdit-shapes mmdit-digits vq discrete-shapes discrete-digits

bench: install
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/report.py

# SFT of the shipped DLM on the built-in set (full and LoRA), measured before and after.
sft: install
	$(BIN)/mmdlm sft --config configs/sft.yaml

bench-sft: install
	OMP_NUM_THREADS=1 $(BIN)/python bench/sft.py
	$(BIN)/python bench/ddp_equality.py
	$(BIN)/python bench/report.py

# The adaptation study (the shipped results took 153 min of training and 25 min of final
# measurements, summed over the runs, on a shared 2-core machine; finished runs are reused and an
# interrupted one resumes from its checkpoint): bench/results/adaptation_study.{json,png}, then the
# README section. Passive OpenMP waiting keeps two threads from spinning against other jobs.
study: install
	OMP_WAIT_POLICY=PASSIVE TQDM_MININTERVAL=30 $(BIN)/python bench/study.py --config configs/study.yaml
	$(BIN)/python bench/report.py

# Its smoke test (a minute or two; CI can run it): tiny runs, results under outputs/study-quick/.
study-quick: install
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python bench/study.py --config configs/study.yaml --quick

# The adaptation curve to parity: the study's dream recipe adapted for 2x, 4x and 16x its M, each its own run
# (about 50 min of training on an otherwise idle 2-core machine), beside the study's run and the shipped
# DLM (8x M): bench/results/adaptation_parity.{json,png}, then docs/results-text.md.
parity: install
	OMP_WAIT_POLICY=PASSIVE TQDM_MININTERVAL=30 $(BIN)/python bench/parity.py --config configs/parity.yaml
	$(BIN)/python bench/report.py

report: install
	$(BIN)/python bench/report.py

clean:
	rm -rf $(VENV) outputs
