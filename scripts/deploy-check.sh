#!/usr/bin/env bash
# Checks every deployment artifact under deploy/ with its field's own tool, and the
# sidecar configurations they ship with the real binary. scripts/check.sh runs this.
# Usage: deploy-check.sh <authz-sidecar binary>
set -euo pipefail
cd "$(dirname "$0")/.."
binary="${1:?usage: deploy-check.sh <authz-sidecar binary>}"

bash scripts/deploy-tools.sh
venv="${AUTHZ_DEPLOY_VENV:-$HOME/.cache/authz-sidecar/deploy-venv}/bin"

echo "-- Dockerfile (hadolint)"
"$venv/hadolint" deploy/Dockerfile
# the image fixes glibc's mmap threshold, so reloads give their memory back
# (bench/README.md, "Memory after a reload"); a base image without glibc would ignore it
grep -qx 'ENV GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072' deploy/Dockerfile ||
  { echo "error: deploy/Dockerfile no longer fixes glibc's mmap threshold" >&2; exit 1; }
# the benchmarks run the sidecar as the image does
for bench in bench/src/bin/loadbench/scenario.rs bench/by-hand.sh; do
  grep -q 'glibc.malloc.mmap_threshold=131072' "$bench" ||
    { echo "error: $bench does not run the sidecar with the image's GLIBC_TUNABLES" >&2; exit 1; }
done
grep -q '^FROM gcr.io/distroless/cc-' deploy/Dockerfile ||
  { echo "error: deploy/Dockerfile's runtime image is not distroless/cc (glibc); check GLIBC_TUNABLES" >&2; exit 1; }

echo "-- CloudFormation templates (cfn-lint)"
"$venv/cfn-lint" deploy/ecs/*.yaml deploy/iam/*.yaml deploy/lambda/*.yaml

echo "-- every AWS call the sidecar makes is allowed by a role under deploy/"
"$venv/python" scripts/iam-coverage.py

echo "-- Kubernetes manifests against the API schemas (kubernetes-validate, strict)"
manifests=()
for file in deploy/kubernetes/base/*.yaml; do
  [ "$(basename "$file")" = kustomization.yaml ] || manifests+=("$file")
done
"$venv/kubernetes-validate" --strict --quiet "${manifests[@]}"
# every resource and generated file a kustomization names is there
"$venv/python" - <<'PY'
import pathlib, sys, yaml
bad = []
for k in pathlib.Path("deploy/kubernetes").rglob("kustomization.yaml"):
    doc = yaml.safe_load(k.read_text())
    names = list(doc.get("resources", []))
    for gen in doc.get("configMapGenerator", []):
        names += [f.split("=", 1)[-1] for f in gen.get("files", [])]
    bad += [f"{k}: {n}" for n in names if not (k.parent / n).exists()]
if bad:
    sys.exit("missing: " + ", ".join(bad))
PY

echo "-- the Kustomize overlays, rendered (kubectl kustomize), against the API schemas and the deployment they mean"
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
  rendered="$(mktemp -d)"
  trap 'rm -rf "$rendered"' EXIT
  for overlay in deploy/kubernetes/overlays/*/; do
    out="$rendered/$(basename "$overlay").yaml"
    kubectl kustomize "$overlay" > "$out"
    "$venv/kubernetes-validate" --strict --quiet "$out"
    "$venv/python" scripts/kustomize-check.py "$out" "$binary"
  done
else
  # Kustomize is a Go module, in none of the package registries these machines reach;
  # kubectl embeds it, and is on these machines' image, but is not installable here
  echo "   SKIPPED: no kubectl here to render the overlays (deploy/README.md)"
fi

echo "-- the sidecar configurations shipped for containers (serve --check-config)"
export OIDC_ISSUER=https://idp.example.com OIDC_AUDIENCE=client AWS_REGION=us-east-1
for config in deploy/config/sidecar.toml deploy/kubernetes/overlays/example/sidecar.toml; do
  "$binary" serve --check-config --config "$config" --policies policies --entities entities
done
