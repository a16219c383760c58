#!/usr/bin/env bash
# Time per epoch of DER++ on the seq-CIFAR-10 protocol (ResNet-18, batch 32 + 32 replayed, SGD, crop+flip on the
# device), on generated data in CIFAR-10's own file format (50,000 training and 10,000 test images of random pixels:
# the time does not depend on what the pixels show). A sibling of gpu_check.sh (docs/gpu.md); no network needed.
#
#   scripts/gpu_der_epoch.sh OUT [run options...]      e.g.  scripts/gpu_der_epoch.sh /tmp/der --device cuda
#
# It trains the first 2 tasks for 1 epoch each (the second replays the memory filled during the first) and writes
# OUT/env.txt, OUT/run.log, OUT/results.json and OUT/epoch_time.txt: seconds per epoch = training seconds / 2.
# Options after OUT go to `clframework run` after the defaults, so they override them.
# Environment: PYTHON (default python3), STRATEGY (default derpp), N_TRAIN (default 50000), N_TEST (default 10000).
set -eu
out=${1:?usage: scripts/gpu_der_epoch.sh OUT [run options...]}
shift
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
strategy=${STRATEGY:-derpp}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PYTHONUNBUFFERED=1

"$py" - "$work/data" "${N_TRAIN:-50000}" "${N_TEST:-10000}" <<'EOF'
import pickle, sys
from pathlib import Path
import numpy as np
root, n_train, n_test = Path(sys.argv[1]) / "cifar-10-batches-py", int(sys.argv[2]), int(sys.argv[3])
root.mkdir(parents=True)
rng = np.random.default_rng(0)
def dump(name, n, start):
    labels = [(start + i) % 10 for i in range(n)]
    with open(root / name, "wb") as f:
        pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": labels,
                     "filenames": [f"{name}-{i}.png" for i in range(n)]}, f)
per = n_train // 5
for i in range(5):
    dump(f"data_batch_{i + 1}", per, i * per)
dump("test_batch", n_test, 0)
with open(root / "batches.meta", "wb") as f:
    pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": per, "num_vis": 3072}, f)
EOF

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$py" -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '|',
            torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA: CPU only')"
} 2>&1 | tee "$out/env.txt"

cd "$work"
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$py" -m clframework run --strategy "$strategy" \
  --benchmark seq-cifar10 --data-root "$work/data" --tasks 2 --epochs 1 --checkpoint-every 0 --quiet \
  --out "$work/run" "$@" 2>&1 | tee "$out/run.log"
cp "$work/run/results.json" "$out/"
"$py" - "$out/results.json" <<'EOF' | tee "$out/epoch_time.txt"
import json, sys
r = json.load(open(sys.argv[1]))
c = r["config"]
epochs = len(r["tasks"]) * c["epochs"]
print(f"{r['strategy']} on {r['benchmark']} ({c['model']}, batch {c['batch_size']}, augment {c['augment']}, "
      f"{c['device']}): {r['train_seconds'] / epochs:.1f} s per epoch "
      f"({r['train_seconds']:.1f} s training over {epochs} epochs)")
EOF
