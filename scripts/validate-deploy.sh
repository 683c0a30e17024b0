#!/usr/bin/env bash
# Validate the Kubernetes manifests in deploy/k8s against the API schemas of
# the oldest Kubernetes they claim to work on (1.30: the preStop sleep action)
# and a current one, strictly (unknown fields are errors). Installs
# kubernetes-validate (PyPI; it carries the schemas, nothing is fetched at run time).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v kubernetes-validate >/dev/null || python3 -m pip install --quiet kubernetes-validate
for v in 1.30 1.37; do
  kubernetes-validate --strict -k "$v" deploy/k8s/*.yaml
done
# The Dockerfiles name files that must exist in the build context.
for f in scripts/get-minilm.sh Cargo.toml crates; do
  [ -e "$f" ] || { echo "deploy: the Dockerfiles copy $f, which is missing" >&2; exit 1; }
done
echo "deploy manifests: valid for Kubernetes 1.30 and 1.37"
