# labnotebook: `make up` starts the lab hub, `make test` proves it. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
BASE_IMAGE ?= labnotebook/base:bookworm
KERNEL_IMAGE ?= labnotebook/kernel-python:latest
HUB_IMAGE ?= labnotebook/hub:latest
# A CA bundle to trust inside image builds (TLS-inspecting proxies); empty: none.
EXTRA_CA_CERT ?=
export EXTRA_CA_CERT

.DEFAULT_GOAL := help
include hub/hub.mk

.PHONY: help install images base-image kernel-image kernelspec test test-fast lint bench \
	clean-kernels lock audit

help:
	@echo "make up          start the lab hub (builds missing images); make down, logs,"
	@echo "                 backup, restore BACKUP=..., upgrade: see README"
	@echo "make test        run the test suite against the real Docker engine"
	@echo "make images      build the base, kernel and hub images"
	@echo "make kernelspec  install the Docker Python kernelspec for this user"
	@echo "make bench       kernel start/shutdown vs the Docker SDK floor, broker and hub figures"
	@echo "make lint        ruff"
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

kernelspec:
	labnotebook kernelspec install --user

lint:
	ruff check provisioner hub tests
	ruff format --check provisioner hub tests

test: install images-if-missing
	$(PYTHON) -m pytest -v -ra

test-fast: install
	$(PYTHON) -m pytest -v -ra -m "not hub and not browser"

bench: install images-if-missing
	$(PYTHON) -m tests.bench

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
