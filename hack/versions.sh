# Pinned versions of everything the local cluster and the tests build or fetch.
# Sourced by the hack/ scripts and the Makefile; bump here and the caches re-key themselves.
export K8S_VERSION=1.35.4
export ETCD_VERSION=3.6.16
export KWOK_VERSION=0.8.0
export COREDNS_VERSION=1.14.7
export HELM_VERSION=3.22.0
export CLI_UTILS_VERSION=v0.37.2
export KUEUE_VERSION=0.17.0
export DEBIAN_SUITE=bookworm
export FTO_CACHE=${FTO_CACHE:-$HOME/.cache/finetune-operator}
export MLFLOW_VERSION=3.17.2        # the tracking server the tests start (hack/setup-mlflow.sh)
export LLAMA_CPP_PYTHON_VERSION=0.3.36   # llama.cpp vendored in its sdist: converter + llama-quantize (hack/build-llama-cpp.sh)
