# labnotebook: `make up` starts the lab hub, `make test` proves it. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
BASE_IMAGE ?= labnotebook/base:bookworm
# Sample kernels (README: "Sample kernels"): R, CUDA Python, and MATLAB from an admin's recipe.
KERNEL_R_IMAGE ?= labnotebook/kernel-r:latest
KERNEL_GPU_IMAGE ?= labnotebook/kernel-gpu:latest
KERNEL_MATLAB_IMAGE ?= labnotebook/kernel-matlab:latest
# A CA bundle to trust inside image builds (TLS-inspecting proxies); empty: none.
EXTRA_CA_CERT ?=
export EXTRA_CA_CERT

.DEFAULT_GOAL := help

# Every `make up` setting and its default are declared once, in hub/settings_schema.py (stdlib
# Python, so this works before anything is installed). build/settings.mk, generated from it,
# gives make the settings' names (HUB_SETTINGS) and the defaults of the images it builds
# (KERNEL_IMAGE, HUB_IMAGE); hub/lab.sh applies the others.
include build/settings.mk
build/settings.mk: hub/settings_schema.py provisioner/defaults.py
	@mkdir -p $(@D)
	@$(PYTHON) hub/settings_schema.py make >$@.$$$$ && mv $@.$$$$ $@

include hub/hub.mk

.PHONY: help install images base-image kernel-image kernelspec test test-fast lint docs bench gpu-check \
	clean-kernels lock audit

help:
	@echo "make up          start the lab hub (builds missing images); make down, logs,"
	@echo "                 backup, restore BACKUP=..., upgrade: see README"
	@echo "make test        run the test suite against the real Docker engine"
	@echo "make images      build the base, kernel and hub images"
	@echo "make kernelspec  install the Docker Python kernelspec for this user"
	@echo "                 (and those of the sample kernels whose images are built)"
	@echo "make kernel-r    build the R kernel image (IRkernel, Debian's r-cran-* packages)"
	@echo "make kernel-gpu  build the CUDA Python kernel image (PyTorch; GBs from PyPI)"
	@echo "make kernel-matlab LICENSE_SERVER=PORT@HOST  build the MATLAB kernel (see its README)"
	@echo "make bench       kernel start/shutdown vs the Docker SDK floor, broker and hub figures"
	@echo "make gpu-check   on a GPU host: each kernel sees exactly its GPUs, CUDA works on each"
	@echo "make lint        ruff"
	@echo "make docs        regenerate docs/settings.md, the reference of every setting"
	@echo "make lock        re-resolve the hub image's exact dependency versions"
	@echo "make audit       ask PyPI's advisory data about the locked versions (needs network)"

install:
	$(PYTHON) -m pip install -q -e '.[test,hub]'

base-image:
	@docker image inspect $(BASE_IMAGE) >/dev/null 2>&1 || images/base/build.sh $(BASE_IMAGE)

kernel-image: base-image
	images/build.sh kernel-python $(KERNEL_IMAGE) --build-arg BASE_IMAGE=$(BASE_IMAGE)

images: kernel-image hub-image

# Build only what is missing (used by `make test` and `make up`).
images-if-missing: base-image
	@docker image inspect $(KERNEL_IMAGE) >/dev/null 2>&1 || $(MAKE) --no-print-directory kernel-image

# The sample kernels' kernelspecs only where their image exists: a launcher entry for a
# missing image would only ever fail.
kernelspec:
	labnotebook kernelspec install --user python-docker
	@for sample in r-docker=$(KERNEL_R_IMAGE) python-gpu-docker=$(KERNEL_GPU_IMAGE); do \
		name=$${sample%%=*} image=$${sample#*=}; \
		if docker image inspect "$$image" >/dev/null 2>&1; then \
			labnotebook kernelspec install --user --image "$$image" "$$name" || exit 1; \
		else \
			echo "Skipped kernelspec $$name: no image $$image"; \
		fi; \
	done

# -- sample kernels ---------------------------------------------------------------------------
.PHONY: kernel-r kernel-r-if-missing kernel-gpu kernel-matlab

# R from Debian's packages (no CRAN): about a minute and 540 MB. `make test` builds it too.
kernel-r: base-image
	images/build.sh kernel-r $(KERNEL_R_IMAGE) --build-arg BASE_IMAGE=$(BASE_IMAGE)
	@echo "Offer it: make kernelspec (this user's Jupyter); see README, Sample kernels"

kernel-r-if-missing: base-image
	@docker image inspect $(KERNEL_R_IMAGE) >/dev/null 2>&1 || $(MAKE) --no-print-directory kernel-r

# PyTorch's CUDA wheels on top of the lab's Python kernel: GBs from PyPI, so never built by
# `make images` or `make test`.
# TORCH_INDEX_URL: PyTorch's index for an older CUDA (older drivers); see its Dockerfile.
TORCH_INDEX_URL ?=
kernel-gpu: images-if-missing
	images/build.sh kernel-gpu $(KERNEL_GPU_IMAGE) --build-arg KERNEL_IMAGE=$(KERNEL_IMAGE) \
		--build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL)

# The licence server's address is a build argument; no licence file ever enters the image.
LICENSE_SERVER ?=
MATLAB_RELEASE ?= R2024b
MATLAB_PRODUCTS ?= MATLAB
kernel-matlab: base-image
	@[ -n "$(LICENSE_SERVER)" ] || { echo "make kernel-matlab: set LICENSE_SERVER to the lab's network licence server, e.g. LICENSE_SERVER=27000@licence.example.org (see images/kernel-matlab/README.md)" >&2; exit 2; }
	images/build.sh kernel-matlab $(KERNEL_MATLAB_IMAGE) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
		--build-arg "MATLAB_RELEASE=$(MATLAB_RELEASE)" --build-arg "MATLAB_PRODUCTS=$(MATLAB_PRODUCTS)" \
		--build-arg "LICENSE_SERVER=$(LICENSE_SERVER)"
	@echo "Offer it: jupyter kernelspec install --user --name matlab-docker images/kernel-matlab/kernelspec"

lint:
	ruff check provisioner hub tests
	ruff format --check provisioner hub tests

# The settings' reference, from the schema; tests/test_settings_schema.py keeps them equal.
docs:
	$(PYTHON) hub/settings_schema.py markdown >docs/settings.md

# The hub image too: exports take their runner's wheels from it (offline), and the hub tests'
# own build of it reuses its layers.
test: install images-if-missing kernel-r-if-missing hub-image-if-missing
	$(PYTHON) -m pytest -v -ra

test-fast: install
	$(PYTHON) -m pytest -v -ra -m "not hub and not browser"

bench: install images-if-missing
	$(PYTHON) -m tests.bench

# The real-GPU checks (tests/test_real_gpus.py) on a lab's GPU host; elsewhere one line says
# why they skipped.
gpu-check: install
	$(PYTHON) -m tests.gpu_check

lock: hub-image-if-missing
	images/hub/lock.sh $(HUB_IMAGE)

# pip-audit asks PyPI's vulnerability data about each exact version of the lock.
audit:
	@$(PYTHON) -m pip install -q pip-audit >/dev/null 2>&1 || { \
		echo "make audit: cannot install pip-audit (no network to PyPI?)"; exit 1; }
	$(PYTHON) -m pip_audit --vulnerability-service pypi --no-deps --disable-pip \
		--requirement images/hub/requirements.lock

clean-kernels:
	labnotebook kernels prune --all
