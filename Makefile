# finetune-operator — run `make help` for the targets.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

FTO_CACHE ?= $(HOME)/.cache/finetune-operator
export FTO_CACHE
# resolved once, on first use (help needs no venv)
VENV = $(eval VENV := $(shell hack/setup-venv.sh))$(VENV)
PY = $(VENV)/bin/python
KUBECONFIG_LOCAL ?= /run/fto-cluster/admin.kubeconfig
TRAINER_IMAGE ?= localhost/finetune-trainer:dev
OPERATOR_IMAGE ?= localhost/finetune-operator:dev
STANDIN_IMAGE ?= localhost/finetune-standin:dev

##@ General
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z0-9_-]+:.*?##/ {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2} /^##@/ {printf "\n%s\n", substr($$0, 5)}' $(MAKEFILE_LIST)

setup: ## Install host packages (apt), the Go-built binaries and the Python venv.
	hack/setup-host.sh
	hack/build-tools.sh
	@echo "venv: $(VENV)"

##@ Development
generate: ## Regenerate the CRD (+ chart and kustomize copies), RBAC, API reference and Argo CD snippet from the code.
	$(PY) -m finetune_operator.generate --root .

verify: ## Fail if generated files drift from the code.
	$(PY) -m finetune_operator.generate --root . --check

lint: ## ruff (lint + format check), mypy (strict), import-linter.
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy operator/src trainer-image/src
	cd operator && PYTHONPATH=../trainer-image/src:src $(VENV)/bin/lint-imports --config ../pyproject.toml

fmt: ## Format the Python code.
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

run-operator: ## Run the operator out of cluster against KUBECONFIG.
	$(VENV)/bin/finetune-operator

##@ Tests
test: ## Everything CI runs: setup, lint, verify, unit, integration, e2e (a skipped test fails; FTO_ALLOW_SKIPS=1 accepts skips).
	hack/test.sh all

test-unit: ## Unit tests only (no cluster).
	hack/test.sh unit

test-integration: ## Integration tier against the local control plane (starts it if needed).
	hack/test.sh integration

test-e2e: ## End-to-end tier on the real node with the real trainer image.
	hack/test.sh e2e

test-kueue: ## End-to-end tests with a real Kueue on the host (quota, queueing, preemption).
	hack/test.sh kueue

##@ Local cluster
cluster-up: ## Start etcd, the control plane, containerd + kubelet (a 2-GPU node) on this machine.
	hack/cluster-up.sh

cluster-down: ## Stop the local cluster and remove its state.
	hack/cluster-down.sh

cluster-status: ## Show what runs and whether the node is Ready.
	hack/cluster-status.sh

kwok-nodes: ## Add N simulated GPU nodes with KWOK (N=10).
	hack/kwok-nodes.sh $(or $(N),10)

image-load: ## Put a locally built image on the node: make image-load IMG=localhost/x:tag
	hack/image-load.sh $(IMG)

##@ Images
images: ## Build and load the trainer, operator and stand-in images.
	hack/images.sh trainer operator standin

##@ Product
demo: ## Bring up the cluster, install the operator, fine-tune a tiny model and show progress live.
	hack/demo.sh

bench: ## CPU-side benchmarks on the local cluster (results into docs/benchmarks.md).
	$(PY) bench/operator_bench.py

.PHONY: help setup generate verify lint fmt run-operator test test-unit test-integration test-e2e \
	cluster-up cluster-down cluster-status kwok-nodes image-load images demo bench
