#!/usr/bin/env bash
# The GPU check (docs/gpu.md) in one command: the CUDA tests, then the paper's permuted protocol at full scale on
# Fashion-MNIST (10 tasks, MLP 784-2000-2000, 20 epochs, batch 256, Adam kept, xi = 0.1), one seed, arm by arm:
# SI c = 0.1, SGD (c = 0), EWC first, then SI c = 0.02 and 0.01, SGD with dropout, joint training.
#
#   scripts/gpu_check.sh OUT [reproduce options...]     e.g.  scripts/gpu_check.sh /tmp/out --data-root DIR
#
# Options after OUT go to `clframework reproduce` after the defaults, so they override them (--arms, --seeds,
# --epochs, --quick, --device). Checkpoints are written after each task only (--checkpoint-every 0). The script stops
# the reproduction in time to end within GPU_CHECK_DEADLINE seconds (default 480); the table, the JSON and Fig. 4 are
# rewritten after every run, so a stopped reproduction keeps every run it finished. OUT receives at most 8 files:
# env.txt, cuda-tests.log, reproduce.log, reproduction.md, reproduction.json, fig4_average.png,
# fig5_omega_correlation.png (when the reproduction ends) and reproduce.tgz (the result folder without *.pt files).
# Without an importable clframework, this checkout is installed (no dependencies, no network) into a temporary folder.
# Environment: PYTHON (default python3), GPU_CHECK_DEADLINE, GPU_CHECK_TESTS (default tests/test_cuda.py).
set -u
out=${1:?usage: scripts/gpu_check.sh OUT [reproduce options...]}
shift
start=$(date +%s)
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
deadline=${GPU_CHECK_DEADLINE:-480}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PYTHONUNBUFFERED=1
cd "$work"  # not the checkout: its clframework/ folder alone is not the installed package

if ! "$py" -c "import clframework.apps.cli" 2>/dev/null; then
  if ! "$py" -m pip install -q --no-deps --no-build-isolation --no-compile --target "$work/site" "$repo" \
      >"$work/install.log" 2>&1; then
    cat "$work/install.log"
    echo "gpu_check: could not install clframework from $repo" >&2
    exit 1
  fi
  export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
fi

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$py" -c "
import platform, torch, clframework
print('python', platform.python_version(), '| torch', torch.__version__, '| CUDA', torch.version.cuda,
      '| clframework', clframework.__version__, 'from', clframework.__file__)
print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA: CPU only',
      '| TF32 matmul', torch.backends.cuda.matmul.allow_tf32, '| CPU threads', torch.get_num_threads())"
} 2>&1 | tee "$out/env.txt"

echo "== CUDA tests"
# shellcheck disable=SC2086
"$py" -m pytest -q -p no:cacheprovider -rs -c "$repo/setup.cfg" --rootdir "$repo" \
  $(for t in ${GPU_CHECK_TESTS:-tests/test_cuda.py}; do echo "$repo/$t"; done) 2>&1 | tee "$out/cuda-tests.log"
tests_rc=${PIPESTATUS[0]}

left=$((deadline - ($(date +%s) - start) - 20))  # 20 s kept for packing
echo "== reproduce permuted-mnist on fashion-mnist, stopped after $left s at the latest"
if [ "$left" -lt 30 ]; then
  echo "gpu_check: no time left for the reproduction" | tee "$out/reproduce.log"
  rep_rc=124
else
  timeout --signal=TERM --kill-after=10 "$left" \
    "$py" -m clframework reproduce permuted-mnist --dataset fashion-mnist --seeds 1 --quiet --out "$work/reproduce" \
    --checkpoint-every 0 --arms si,sgd,ewc,si:c=0.02,si:c=0.01,sgd-dropout,joint "$@" 2>&1 | tee "$out/reproduce.log"
  rep_rc=${PIPESTATUS[0]}
fi
[ "$rep_rc" = 124 ] && echo "gpu_check: the reproduction reached its time limit; reproduction.md has its finished runs"

for f in reproduction.md reproduction.json fig4_average.png fig5_omega_correlation.png; do
  [ -f "$work/reproduce/$f" ] && cp "$work/reproduce/$f" "$out/"
done
# without the checkpoints and saved states (*.pt, hundreds of MB at this width)
[ -d "$work/reproduce" ] && tar czf "$out/reproduce.tgz" --exclude='*.pt' -C "$work" reproduce
echo "gpu_check: tests rc $tests_rc, reproduce rc $rep_rc, $(($(date +%s) - start)) s in all; files in $out"
[ "$tests_rc" = 0 ] && { [ "$rep_rc" = 0 ] || [ "$rep_rc" = 124 ]; }
