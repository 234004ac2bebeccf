# Set-up and the main job. `make demo` and `make test` work on a fresh machine:
# they create the virtual environment and install everything they need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(shell date +%Y%m%d-%H%M%S)
RUN    := runs/demo-$(STAMP)
IMGRUN := runs/demo-fashion-$(STAMP)
PROMPTS := 西江月 破阵子 临江仙
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install fashion-mnist chromium sandbox music llamacpp demo test test-slow bench clean

$(BIN)/aigc: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # the CPU build; pyproject asks only for a range
	$(BIN)/pip install -q -e .
	touch $@

install: $(BIN)/aigc

# Fashion-MNIST comes from Debian (dataset-fashion-mnist); installed where apt-get is available.
fashion-mnist:
	@if [ ! -f $(FMNIST) ]; then \
		if command -v apt-get >/dev/null 2>&1; then \
			SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
			$$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
			{ $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
			echo "warning: could not install dataset-fashion-mnist; image steps need it (see README)"; \
		else echo "warning: no apt-get; put the Fashion-MNIST IDX files in a folder and set data.source (see README)"; fi; \
	fi

# Debian's Chromium, for the browser test of the web page (Playwright drives it; nothing is downloaded
# by Playwright itself) and a CJK font (fonts-wqy-zenhei, 7.5 MB: without one Chromium draws Chinese as
# boxes). Where Chromium cannot be installed that test is skipped.
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
		if command -v apt-get >/dev/null 2>&1; then \
			SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
			$$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
			{ $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q chromium >/dev/null 2>&1; } || \
			echo "warning: could not install chromium; the browser test will be skipped"; \
		else echo "warning: no apt-get; the browser test needs chromium on PATH and will be skipped"; fi; \
	fi
	@if command -v apt-get >/dev/null 2>&1 && ! fc-list :lang=zh 2>/dev/null | grep -q .; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get install -y -q fonts-wqy-zenhei >/dev/null 2>&1 || \
			echo "warning: could not install fonts-wqy-zenhei; the browser will draw Chinese as boxes"; \
	fi

# The code sandbox's kernel layers: Debian's bubblewrap (namespaces) and libseccomp (the filter that
# stops new processes). Installed where apt-get is available; without them `aigc eval --task` refuses to run
# generated code unless told --unsafe-no-sandbox.
sandbox:
	@if ! command -v bwrap >/dev/null 2>&1 || ! { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } | grep -q libseccomp.so.2; then \
		if command -v apt-get >/dev/null 2>&1; then \
			SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
			$$SUDO apt-get install -y -q bubblewrap libseccomp2 >/dev/null 2>&1 || \
			{ $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q bubblewrap libseccomp2 >/dev/null 2>&1; } || \
			echo "warning: could not install bubblewrap/libseccomp2; the code sandbox will refuse to run"; \
		else echo "warning: no apt-get; the code sandbox needs bubblewrap (bwrap) and libseccomp on this machine"; fi; \
	fi

# Audio for the music models: Debian's FluidSynth and its General MIDI soundfont (fluid-soundfont-gm, MIT,
# about 140 MB installed), where apt-get is available; without them tunes still render to ABC, MIDI and PNG.
music:
	@if ! command -v fluidsynth >/dev/null 2>&1 || [ ! -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ]; then \
		if command -v apt-get >/dev/null 2>&1; then \
			SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
			$$SUDO apt-get install -y -q fluidsynth fluid-soundfont-gm >/dev/null 2>&1 || \
			{ $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q fluidsynth fluid-soundfont-gm >/dev/null 2>&1; } || \
			echo "warning: could not install fluidsynth/fluid-soundfont-gm; tunes will not render to WAV"; \
		else echo "warning: no apt-get; rendering tunes to WAV needs fluidsynth and a General MIDI soundfont"; fi; \
	fi

# Fine-tune tang-base (the shipped base model) on the ci of Xin Qiji for 60 steps (about a minute), then print
# for the same prompts and seeds the ci of the base model and of the fine-tuned one; then images from
# prompts in English and Chinese by the shipped text-to-image diffusion model (color-fashion-t2i), and a
# class-conditional DCGAN trained for one minute as the (rough) demonstration of image training.
T2I_PROMPTS := "a red dress" "a blue sneaker" "黄色的包" "一件绿色的外套"
demo: install fashion-mnist
	$(BIN)/aigc train configs/xin-qiji-finetune.toml --train.out_dir=$(RUN)
	@seed=0; for p in $(PROMPTS); do \
		echo; echo "=== $$p -- tang-base (before)"; \
		$(BIN)/aigc sample tang-base --prompt $$p --n 2 --seed $$seed --max-new-tokens 100 || exit 1; \
		echo; echo "=== $$p -- fine-tuned on Xin Qiji (after)"; \
		$(BIN)/aigc sample $(RUN) --prompt $$p --n 2 --seed $$seed --max-new-tokens 100 || exit 1; \
		seed=$$((seed + 100)); \
	done
	@echo; echo "run folder: $(RUN) (loss curves in $(RUN)/loss.png)"
	@echo; echo "=== images from a prompt: the shipped text-to-image diffusion model color-fashion-t2i"
	@mkdir -p $(IMGRUN); i=0; for p in $(T2I_PROMPTS); do i=$$((i + 1)); \
		$(BIN)/aigc sample color-fashion-t2i --prompt "$$p" --n 8 --seed 0 --scale 4 --out $(IMGRUN)/prompt-$$i.png \
			|| exit 1; done
	@echo "    $(IMGRUN)/prompt-{1..4}.png: $(T2I_PROMPTS)"
	@echo; echo "=== image training: a class-conditional DCGAN on Fashion-MNIST for one minute (rough by design)"
	$(BIN)/aigc train configs/fashion-dcgan.toml --train.out_dir=$(IMGRUN)/dcgan --train.max_minutes=1 \
		--train.min_lr=2e-4 --train.eval_interval=250 --train.checkpoint_interval=250
	$(BIN)/aigc sample $(IMGRUN)/dcgan --n 100 --seed 0 --scale 3 --out $(IMGRUN)/dcgan-grid.png
	@echo "one column per class: $(IMGRUN)/dcgan-grid.png (training curves: $(IMGRUN)/dcgan/loss.png)"
	@echo; echo "serve them (OpenAI-compatible API and a web page on http://127.0.0.1:8000/):"; \
		echo "  $(BIN)/aigc serve $(RUN) color-fashion-t2i $(IMGRUN)/dcgan"

# llama.cpp's Python binding, built from source (10 to 20 minutes on 2 cores): the GGUF tests then run
# our exports in llama.cpp itself instead of skipping that part. Not part of `make test`.
llamacpp: install
	$(BIN)/pip install -q llama-cpp-python

test: install fashion-mnist chromium sandbox music
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -m pytest -q -m "not slow" --durations=25

test-slow: install fashion-mnist chromium sandbox music   # the long checks (compiled decoding, ...)
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf prepared runs .pytest_cache
