#!/usr/bin/env bash
# One call of a GPU lease (see docs/gpu.md), run on the GPU machine from the repository root:
#
#   benchmarks/gpu_run.sh install                      # once per machine: carried .whl/ -> /tmp/site
#   benchmarks/gpu_run.sh check [SECONDS]              # issue 22: gpu_check.py, then CLIP paper rows
#   benchmarks/gpu_run.sh run NOTEBOOK[,NOTEBOOK] [CHUNK_SECONDS] [--fresh]
#   benchmarks/gpu_run.sh crm-epochs [SECONDS]         # issue 29: gpu_check.py, then CRM/GloRo nets
#
# "check" runs benchmarks/gpu_check.py (CRM step ratios, one epoch of every paper setting, the
# predicted paper time per notebook) into $OUT, then spends what is left of SECONDS (default 450)
# on the CLIP notebook at the paper profile through the chunked path (the MNIST nets that CPU
# chunks committed to figures/trained/ are found there, so the chunk trains Fashion-MNIST).
#
# "run" executes one chunk of ./reproduce.sh --profile paper on the GPU, resuming from the model
# cache and the notebooks finished by earlier calls (--fresh starts over), with the datasets from
# the carried .data/ folder. It exits 75 when the chunk ended before every notebook finished (call
# it again), 0 when all finished. Each notebook's output folder, the run log and any failed
# executed notebook are packed into $OUT (at most 8 files) for the device tool to bring back.
set -uo pipefail
cd "$(dirname "$0")/.."
SITE=/tmp/site
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

case "${1:-}" in
    install)
        [[ -d .whl ]] || { echo "gpu_run.sh: no .whl/ here; carry it (benchmarks/gpu_wheels.sh)" >&2; exit 2; }
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" .whl/*.whl || exit 1
        python3 -c "import papermill, cvxpy, scs, art, nbconvert, torch; print('gpu_run.sh: ready,', torch.cuda.get_device_name(0))"
        exit $? ;;
    check)
        budget="${2:-450}"
        begin=$(date +%s)
        python3 benchmarks/gpu_check.py --out "${OUT:-outputs/gpu_check}" || exit 1
        left=$(( budget - ($(date +%s) - begin) - 60 ))   # a minute for the chunk's last net to end
        if (( left < 60 )); then
            echo "gpu_run.sh: no time left for the CLIP paper rows ($left s)"; exit 0
        fi
        exec "$0" run clip "$left" ;;
    crm-epochs)
        # For a lease too short for a notebook (15 min): the measurements of "check", then the
        # nets of lipcore.ablations.crm (GloRo and CRM side by side, shortest first) until
        # SECONDS, each finished net's cache file copied to $OUT for figures/trained/.
        budget="${2:-540}"
        begin=$(date +%s)
        timeout $(( budget / 2 )) python3 benchmarks/gpu_check.py --out "${OUT:-outputs/gpu_check}" \
            || echo "gpu_run.sh: gpu_check.py did not finish (status $?)"
        left=$(( budget - ($(date +%s) - begin) - 20 ))
        export LIPCORE_CACHE=.cache/gpu LIPCORE_PROGRESS=0
        for method in GloRo CRM; do
            timeout "$left" python3 -m lipcore.ablations.crm train --methods "$method" \
                --device cuda --data "${LIPCORE_DATA:-.data}" &
        done
        wait
        ls -la .cache/gpu
        [[ -n "${OUT:-}" ]] && cp .cache/gpu/*.pt "$OUT/"
        exit 0 ;;
    run) ;;
    *) sed -n '2,19p' "$0"; exit 2 ;;
esac

ONLY="${2:?which notebooks? e.g. pauli_admm,clip}"
CHUNK="${3:-480}"
RESUME=--resume
[[ "${4:-}" == "--fresh" ]] && RESUME=""
DATA="${LIPCORE_DATA:-.data}"
PROFILE="${GPU_RUN_PROFILE:-paper}" DEVICE="${GPU_RUN_DEVICE:-cuda}"   # overridable to test off a GPU
[[ -d "$DATA" ]] || { echo "gpu_run.sh: no $DATA/ here; carry the .npz files (docs/gpu.md)" >&2; exit 2; }
log="outputs/gpu_run.log"
mkdir -p outputs
start=$(date +%s)
LIPCORE_PYTHON="${LIPCORE_PYTHON:-python3}" ./reproduce.sh --profile "$PROFILE" --device "$DEVICE" \
    --only "$ONLY" --data "$DATA" --chunk-seconds "$CHUNK" $RESUME 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
echo "gpu_run.sh: chunk of $(( $(date +%s) - start )) s ended with status $status" | tee -a "$log"

if [[ -n "${OUT:-}" ]]; then                # pack what the device tool brings back
    for name in ${ONLY//,/ }; do
        grep -qs "\"profile\": \"$PROFILE\"" "figures/$name/results.json" \
            && tar czf "$OUT/$name.tar.gz" -C figures "$name"
        [[ $status -ne 0 && -f "outputs/$name.ipynb" ]] && cp "outputs/$name.ipynb" "$OUT/failed_$name.ipynb"
    done
    cp "$log" "$OUT/"
fi
exit "$status"
