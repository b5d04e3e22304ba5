# Two commands do all set-up on a fresh machine:
#   make demo   -- create the venv if needed, then run the main job on the embedded default
#   make test   -- create the venv if needed, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg

.PHONY: venv demo demo-vlm demo-grid tiny-photo tiny-vlm-photo tiny-qwen-vl-photo test bench clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# Packages whose metadata pins an old torch/numpy but that work with ours
	# (proved by the tests): installed without their pinned dependencies.
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

# Main job on the embedded default: a short AlignProp run of the built-in tiny
# FLUX Kontext on bundled photos with the math-only rewards.
demo: $(STAMP)
	$(PY) -m alignprop.demo --output_dir outputs/demo

# The rating question alone steers an edit: two LoRAs on tiny-photo that differ only in the
# question asked of tiny-vlm-photo (warmth vs brightness); PASS/FAIL on held-out photos.
demo-vlm: $(STAMP)
	$(PY) -m alignprop.demo_vlm --output_dir outputs/demo_vlm

# Anti-grid benchmark on a synthetic artifact set made from bundled photos.
demo-grid: $(STAMP)
	$(PY) benchmark_anti_periodic.py --demo --out_dir outputs/anti_grid_demo

# Re-create the pretrained tiny model shipped in alignprop/assets/tiny-photo (CPU, ~15 min;
# writes to outputs/, never over the shipped weights). See docs/tiny_photo.md.
tiny-photo: $(STAMP)
	$(PY) -m alignprop.pretrain_tiny --output_dir outputs/tiny-photo

# Re-create the tiny VLM shipped in rewards/assets/tiny-vlm-photo (CPU, one thread, ~15 min;
# writes to outputs/, never over the shipped files). --force: the shipped model does not pass
# every held-out check (its manifest lists them), and it is written anyway. See docs/vlm.md.
tiny-vlm-photo: $(STAMP)
	$(PY) -m alignprop.pretrain_tiny_vlm --output_dir outputs/tiny-vlm-photo --force

# The same for the tiny Qwen2.5-VL shipped in rewards/assets/tiny-qwen-vl-photo (its manifest's
# command: ~15 CPU min, one thread; writes to outputs/; re-run once: the same bytes). See docs/vlm.md.
tiny-qwen-vl-photo: $(STAMP)
	$(PY) -m alignprop.pretrain_tiny_vlm --family qwen2.5-vl --vision_steps 450 --steps 600 \
		--output_dir outputs/tiny-qwen-vl-photo --force

# -rs prints the reason of every skipped test (the browser test says when no Chromium is
# installed: apt-get install chromium chromium-driver, as .ci/run does).
test: $(STAMP)
	$(PY) -m pytest -q -rs tests

# Speed / memory figures (not tests). Run on a quiet machine; see BENCHMARKS in README.
bench: $(STAMP)
	PYTHONPATH=. $(PY) benchmarks/bench_grid.py
	PYTHONPATH=. $(PY) benchmarks/bench_vlm.py
	PYTHONPATH=. $(PY) benchmarks/bench_trainer.py

clean:
	rm -rf outputs .pytest_cache
