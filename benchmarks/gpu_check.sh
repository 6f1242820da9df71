#!/usr/bin/env bash
# The GPU check in one command (benchmarks/gpu_check.py says what it measures).
#
#   bash benchmarks/gpu_check.sh            # one GPU machine, fresh checkout, < 8 min:
#                                           # writes benchmarks/RESULTS-gpu.md
#   bash benchmarks/gpu_check.sh --smoke    # CPU, tiny models, a few minutes: writes
#                                           # $TMPDIR/imagesearch-RESULTS-gpu-smoke.md
#
# Installs only what is missing: on a GPU, a virtual environment .venv-gpu that sees the
# system's packages (a preinstalled CUDA torch is reused; else PyPI's Linux torch wheel,
# which is a CUDA build), then this project. The smoke run reuses .venv when it works.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
for arg in "$@"; do
    if [[ $arg == --smoke ]]; then smoke=1; fi
done
budget_s=${GPU_CHECK_BUDGET_S:-480}
started=$SECONDS

works() {  # the environment imports everything the check needs (and on a GPU, sees it)
    local check="import deployments, ingress, ray, httpx, transformers, lancedb, torch"
    if [[ $smoke == 0 ]]; then check+="; assert torch.cuda.is_available(), 'no CUDA'"; fi
    "$1/bin/python" -c "$check" >/dev/null 2>&1
}

if [[ $smoke == 1 ]]; then
    venv=.venv
    if ! { [[ -x $venv/bin/python ]] && works "$venv"; }; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet torch==2.13.0  # the CPU build, as .ci/run
        "$venv/bin/pip" install --quiet -e ".[test]"
    fi
else
    venv=.venv-gpu
    if ! { [[ -x $venv/bin/python ]] && works "$venv"; }; then
        [[ -x $venv/bin/python ]] || python3 -m venv --system-site-packages "$venv"
        if ! "$venv/bin/python" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
            "$venv/bin/pip" install --quiet torch
        fi
        # httpx drives the clients; the rest comes with the project.
        "$venv/bin/pip" install --quiet -e . httpx
    fi
    works "$venv" || { echo "gpu_check: CUDA torch is not usable in $venv" >&2; exit 1; }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
echo "gpu_check: environment ready after $((SECONDS - started)) s"

left=$((budget_s - (SECONDS - started)))
if ((left < 120)); then left=120; fi
# The python part stops itself at its own pace; this is the backstop of the budget.
exec timeout --signal=INT --kill-after=30 "$left" "$venv/bin/python" -m benchmarks.gpu_check "$@"
