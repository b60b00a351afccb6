#!/usr/bin/env bash
# Step cost on one GPU: AdaOpt (fused, foreach) against torch's AdamW (fused, foreach) and a copy_ of AdamW's bytes,
# at ~25M and ~350M parameters, fp32 and bf16. Needs no network; a few minutes on one GPU (most of it the
# fused AdaOpt's compile, once per size and dtype).
#
#     bash training_scripts/gpu_bench.sh [output_dir]      # default out/gpu_bench; CUDA_VISIBLE_DEVICES picks the GPU
#
# Writes one JSON per run (bench_optimizer_step.py --output_json) and gpu_bench.md with the four tables.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/gpu_bench}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
for size in 25e6 350e6; do
  # d_model 1024 at 350M: 24 GPT-2-medium-shaped blocks; 512 at 25M (the CPU table's shapes)
  d_model=$([ "$size" = 25e6 ] && echo 512 || echo 1024)
  for dtype in float32 bfloat16; do
    name="${size}_${dtype}"
    timeout 900 python training_scripts/bench_optimizer_step.py --device cuda --num_params "$size" \
      --d_model "$d_model" --dtype "$dtype" --steps 30 --warmup 5 --only adaopt \
      --output_json "$out/$name.json" | tee "$out/$name.log"
  done
done
python - "$out" <<'PY'
import glob, json, os, sys
from hf_adaopt.lab.suite_report import bench_markdown
out = sys.argv[1]
runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "*.json")))]
with open(os.path.join(out, "gpu_bench.md"), "w") as f:
    f.write("\n\n".join(bench_markdown(r) for r in runs) + "\n")
print(open(os.path.join(out, "gpu_bench.md")).read())
PY
