#!/usr/bin/env bash
# Re-make every committed table and figure (./reproduce.sh [options]) or run the tests (./reproduce.sh test).
#
#   ./reproduce.sh [--profile smoke|cpu|paper] [--device auto|cpu|cuda] [--only NAME[,NAME]]
#                  [--out DIR] [--data DIR] [--chunk-seconds N] [--resume] [--grid-address ADDR]
#                  [--part-profile NOTEBOOK:PART=PROFILE[,...]]
#   ./reproduce.sh --quick [--only NAME[,NAME]] [--data DIR]
#   ./reproduce.sh test [pytest args]
#
# With no --profile or --part-profile, each notebook re-runs at the setting its committed result
# records (figures/MANIFEST.json: profile of each part, seed, device, options; lipcore.manifest).
# A notebook with no result runs at paper with CUDA, else cpu. An explicit setting that would
# put any part of a committed result at a lower profile is written beside it, to
# figures/variants/<profile>/, never over it.
#
# At the end the script prints how close the run came: per notebook and in total, how many
# reported numbers are identical to the ones they replaced, within a stated tolerance, or
# different, and (the quick check) not re-derived (lipcore.summary; also in REPORT.md). Each run keeps its executed notebook, without
# progress bars, in OUT/NAME/NAME.ipynb and renders OUT/site/index.html.
#
# --part-profile runs parts of a notebook at another profile, e.g. --part-profile clip:MNIST=paper.
# Grids of training runs (lipschitz_loss) go to a local Dask cluster, or --grid-address's scheduler.
# Chunked runs: --chunk-seconds N stops starting new training N seconds in (trained models stay
# cached) and exits with status 75; the same command with --resume continues. Exit 0 means every
# selected notebook finished. Details: docs/reproducing.md.
#
# --quick trains nothing: every paper notebook runs at its recorded setting on the nets cached or
# kept in figures/trained/ (LIPCORE_NO_TRAIN=1; set without --quick, it is refused), writes to
# outputs/quick/ (never figures/), skips the strong attacks (pauli_admm, clip, crm_liplt), and
# prints the same summary against the committed results, naming what it could not re-derive
# (a notebook, a part whose nets are not kept, a skipped column or table) and why. Its grids run
# on this machine (a remote Dask worker would not know that it must not train).
#
# Python: $LIPCORE_PYTHON if set; else .venv/ if it exists; else the current python3 when it
# already has everything; else a new .venv/ is bootstrapped with pip (pip install -e .[dev] plus
# $LIPCORE_TORCH, default torch==2.14.1 torchvision==0.29.1, in the same step).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
TORCH_SPEC="${LIPCORE_TORCH:-torch==2.14.1 torchvision==0.29.1}"
RUN_MODULES="torch torchvision cvxpy scs clarabel numpy scipy threadpoolctl pandas matplotlib tqdm papermill ipykernel tabulate art distributed latex2mathml lazy_loader pyautoattack"
TEST_MODULES="$RUN_MODULES pytest nbval yaml eclipse_nn hypothesis deel.torchlip"
REQUIRED_MODULES="$RUN_MODULES"   # the test command asks for TEST_MODULES

die() { echo "reproduce.sh: $*" >&2; exit 1; }

has_everything() {  # does interpreter $1 import every required module?
    "$1" - "$REQUIRED_MODULES" <<'PY' 2>/dev/null
import importlib.util, sys
sys.exit(0 if all(importlib.util.find_spec(m) for m in sys.argv[1].split()) else 1)
PY
}

choose_python() {
    if [[ -n "${LIPCORE_PYTHON:-}" ]]; then
        has_everything "$LIPCORE_PYTHON" || die "LIPCORE_PYTHON=$LIPCORE_PYTHON lacks one of: $REQUIRED_MODULES"
        PY="$LIPCORE_PYTHON"
    elif [[ -x .venv/bin/python ]] && has_everything .venv/bin/python; then
        PY=.venv/bin/python
    elif [[ ! -d .venv ]] && command -v python3 >/dev/null && has_everything python3; then
        PY="$(command -v python3)"
        echo "reproduce.sh: using $PY (it already has every required package)"
    else
        command -v python3 >/dev/null || die "python3 not found; install Python >= 3.10"
        echo "reproduce.sh: bootstrapping .venv/ (pip install -e .[dev] $TORCH_SPEC) ..."
        [[ -x .venv/bin/python ]] || python3 -m venv .venv || die "could not create .venv (python3 -m venv)"
        .venv/bin/python -m pip install --quiet --upgrade pip
        # shellcheck disable=SC2086  # TORCH_SPEC is a list of requirements
        .venv/bin/python -m pip install --quiet $TORCH_SPEC -e ".[dev]" \
            || die "pip install failed; see the messages above"
        PY=.venv/bin/python
    fi
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    # notebooks run with notebooks/ as working directory: make a relative data path absolute
    if [[ -n "${LIPCORE_DATA:-}" && -d "$LIPCORE_DATA" ]]; then
        LIPCORE_DATA="$(cd "$LIPCORE_DATA" && pwd)"
        export LIPCORE_DATA
    fi
}

run_tests() {
    REQUIRED_MODULES="$TEST_MODULES"
    choose_python
    export MPLBACKEND=Agg
    exec "$PY" -m pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider "$@"
}

if [[ "${1:-}" == "test" ]]; then
    shift
    run_tests "$@"
fi

PROFILE="" DEVICE="" PART_SPEC="" ONLY="" OUT="$ROOT/figures" DATA="${LIPCORE_DATA:-}" CHUNK="" RESUME="" QUICK=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --profile) PROFILE="${2:?--profile needs a value}"; shift 2 ;;
        --device) DEVICE="${2:?--device needs a value}"; shift 2 ;;
        --only) ONLY="${2:?--only needs a value}"; shift 2 ;;
        --out) OUT="${2:?--out needs a value}"; shift 2 ;;
        --data) DATA="${2:?--data needs a value}"; shift 2 ;;
        --chunk-seconds) CHUNK="${2:?--chunk-seconds needs a value}"; shift 2 ;;
        --resume) RESUME=1; shift ;;
        --grid-address) export LIPCORE_GRID_ADDRESS="${2:?--grid-address needs a value}"; shift 2 ;;
        --part-profile) PART_SPEC="${2:?--part-profile needs a value}"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
        *) die "unknown option '$1' (see ./reproduce.sh --help)" ;;
    esac
done
case "$DEVICE" in ""|auto|cpu|cuda) ;; *) die "--device must be auto, cpu or cuda, not '$DEVICE'" ;; esac
case "$PROFILE" in ""|smoke|cpu|paper) ;; *) die "--profile must be smoke, cpu or paper, not '$PROFILE'" ;; esac
[[ -z "$CHUNK" || "$CHUNK" =~ ^[0-9]+$ ]] || die "--chunk-seconds must be a whole number of seconds, not '$CHUNK'"
if [[ -n "$QUICK" ]]; then
    [[ -z "$PROFILE$PART_SPEC$CHUNK$RESUME" ]] || die "--quick re-derives the recorded settings: it takes no --profile, --part-profile, --chunk-seconds or --resume"
    [[ "${LIPCORE_GRID_ADDRESS:-serial}" == serial ]] || die "--quick runs its grids on this machine (a remote Dask worker would train): it takes no --grid-address (unset LIPCORE_GRID_ADDRESS)"
    [[ "$OUT" == "$ROOT/figures" ]] || die "--quick writes to outputs/quick/ and compares with figures/: it takes no --out"
    OUT="$ROOT/outputs/quick"
    export LIPCORE_NO_TRAIN=1
elif [[ "${LIPCORE_NO_TRAIN:-}" == 1 ]]; then
    # the notebooks read it as the quick check (NotebookRun.quick): no strong attacks, a part
    # whose nets are missing left out; such results must never stand in for a full run
    die "LIPCORE_NO_TRAIN=1 is set: the notebooks would run as the quick check (strong attacks skipped, parts without nets left out), whose results must not go to $OUT; use --quick (into outputs/quick/), or unset LIPCORE_NO_TRAIN"
fi

# check everything that needs no Python first: a typo fails in a second, not after an install
# paper notebooks, then the lessons (notebooks/lessons/: no parameters, quick)
mapfile -t ALL < <(ls notebooks/*.ipynb notebooks/lessons/*.ipynb | xargs -n1 basename | sed 's/\.ipynb$//')
notebook_path() { [[ -f "notebooks/$1.ipynb" ]] && echo "notebooks/$1.ipynb" || echo "notebooks/lessons/$1.ipynb"; }
if [[ -n "$ONLY" ]]; then
    IFS=',' read -r -a SELECTED <<< "$ONLY"
    for name in "${SELECTED[@]}"; do
        [[ -f "$(notebook_path "$name")" ]] || die "no notebook named '$name' (have: ${ALL[*]})"
    done
else
    SELECTED=("${ALL[@]}")
    # the quick check re-derives tables: the paper notebooks, not the lessons
    [[ -z "$QUICK" ]] || mapfile -t SELECTED < <(ls notebooks/*.ipynb | xargs -n1 basename | sed 's/\.ipynb$//')
fi
if [[ -n "$DATA" ]]; then
    [[ -d "$DATA" ]] || die "--data directory '$DATA' does not exist; point it at the folder with mnist.npz and fashion_mnist.npz"
    DATA="$(cd "$DATA" && pwd)"
fi
if [[ -n "$PART_SPEC" ]]; then
    IFS=',' read -r -a PARTS <<< "$PART_SPEC"
    for part in "${PARTS[@]}"; do
        [[ "$part" =~ ^[A-Za-z0-9_]+:[^=,]+=(smoke|cpu|paper)$ ]] \
            || die "--part-profile entry '$part' must read NOTEBOOK:PART=smoke|cpu|paper, e.g. clip:MNIST=paper"
        [[ -f "notebooks/${part%%:*}.ipynb" ]] || die "--part-profile names notebook '${part%%:*}', which does not exist (have: ${ALL[*]})"
    done
fi

choose_python
# the kernel's inline backend embeds every figure in the executed notebook (Agg would drop them)
export MPLBACKEND=module://matplotlib_inline.backend_inline
export LIPCORE_PROGRESS="${LIPCORE_PROGRESS:-text}"   # plain-text bars show in the terminal log
# the book's copy of a lesson: explore also pre-renders its main control (lipcore.lessons.show)
export LIPCORE_BOOK_FRAMES="${LIPCORE_BOOK_FRAMES:-1}"
OUT_EXISTED=""; [[ -d "$OUT" ]] && OUT_EXISTED=1
mkdir -p "$OUT" outputs
OUT="$(cd "$OUT" && pwd)"
cleanup_failed() {  # nothing half-made stays behind: the staging folder, an --out made for nothing
    rm -rf "$2/.$1.partial"
    [[ -n "$OUT_EXISTED" ]] || rmdir "$OUT" 2>/dev/null || true
}

# what each notebook runs at, and where it writes (lipcore.manifest): name, output root,
# papermill parameters (JSON), $LIPCORE_PART_PROFILES, note
RECORDS="$OUT"; [[ -z "$QUICK" ]] || RECORDS="$ROOT/figures"   # the results whose settings to re-run
plan_args=(--out "$RECORDS" --only "$(IFS=,; echo "${SELECTED[*]}")")
[[ "$OUT" != "$ROOT/figures" ]] || plan_args+=(--default-out)
[[ -z "$PROFILE" ]] || plan_args+=(--profile "$PROFILE")
[[ -z "$PART_SPEC" ]] || plan_args+=(--part-profile "$PART_SPEC")
[[ -z "$DEVICE" ]] || plan_args+=(--device "$DEVICE")
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' && plan_args+=(--cuda)
# files of this run (and of its --resume), apart from any other run in the same checkout
RUN_ID="$(printf '%s|' "$PROFILE" "$PART_SPEC" "$DEVICE" "$OUT" "${SELECTED[@]}" | cksum | cut -d' ' -f1)"
PLAN="outputs/.plan-$RUN_ID"
"$PY" -m lipcore.manifest plan "${plan_args[@]}" > "$PLAN" || { cleanup_failed none "$OUT"; exit 1; }

echo "reproduce.sh: out=$OUT data=${DATA:-<torchvision download>}${QUICK:+ (quick check: no training)}"
RUN_START=$(date +%s)
FINISHED="outputs/.finished-$RUN_ID"       # notebooks done by earlier chunks of this run
PREVIOUS="outputs/previous-$RUN_ID"         # each result as it was before this run, to compare
if [[ -z "$RESUME" ]]; then
    : > "$FINISHED"
    rm -rf "$PREVIOUS"
fi
touch "$FINISHED"
mkdir -p "$PREVIOUS"
if [[ -n "$CHUNK" ]]; then
    LIPCORE_DEADLINE=$(( $(date +%s) + CHUNK ))
    export LIPCORE_DEADLINE
fi
i=0 n=${#SELECTED[@]} ROOTS=("$OUT") DONE=()
while IFS=$'\t' read -r -u 3 name dest params parts note; do   # fd 3: papermill reads stdin
    i=$((i + 1))
    [[ -z "$QUICK" ]] || dest="$OUT"
    DONE+=("$dest/$name")
    [[ " ${ROOTS[*]} " == *" $dest "* ]] || ROOTS+=("$dest")
    if grep -qx "$name" "$FINISHED"; then
        echo "[$i/$n] $name: finished by an earlier chunk (--resume), skipped"
        continue
    fi
    echo "[$i/$n] $name ($note) ..."
    start=$(date +%s)
    path="$(notebook_path "$name")"
    if [[ -n "$QUICK" && -f "$RECORDS/$name/nets.jsonl" ]]; then
        # exit 3: none of the notebook's nets is here; any other failure is an error, not a skip
        rc=0; why="$("$PY" -m lipcore.cache missing "$RECORDS/$name/nets.jsonl")" || rc=$?
        if [[ $rc == 3 ]]; then
            "$PY" -m lipcore.summary skip "$dest/$name" "$why"
            echo "[$i/$n] $name: not re-derived ($why)"
            continue
        fi
        [[ $rc == 0 ]] || die "could not read $RECORDS/$name/nets.jsonl (python -m lipcore.cache missing exited $rc)"
    fi
    # keep the old numbers before they are overwritten (the quick check: the committed ones)
    before="$dest"
    [[ -z "$QUICK" ]] || { before="$RECORDS"; rm -rf "${PREVIOUS:?}/$name"; }
    if [[ ! -d "$PREVIOUS/$name" ]]; then
        mkdir -p "$PREVIOUS/$name"
        for f in results.json comparison.csv; do
            [[ ! -f "$before/$name/$f" ]] || cp "$before/$name/$f" "$PREVIOUS/$name/"
        done
    fi
    [[ "$parts" != "-" ]] || parts=""
    args=()
    if [[ "$params" != "-" ]]; then             # lessons take no parameters
        echo "    parameters $params${parts:+, part profiles $parts}"
        args=(-y "$params" -p out_dir "$dest")
        [[ -z "$DATA" ]] || args+=(-p data_dir "$DATA")
    fi
    export LIPCORE_NET_LOG="$ROOT/outputs/.nets-$RUN_ID-$name.jsonl"   # where each net came from
    rm -f "$LIPCORE_NET_LOG"
    if ! LIPCORE_PART_PROFILES="$parts" "$PY" -m papermill "$path" "outputs/$name.ipynb" \
            --cwd "$(dirname "$path")" --kernel python3 --progress-bar --log-output "${args[@]}"; then
        cleanup_failed "$name" "$dest"
        if [[ -n "$QUICK" ]] && grep -q NotTrained "outputs/$name.ipynb"; then
            "$PY" -m lipcore.summary skip "$dest/$name" "outputs/$name.ipynb"
            echo "[$i/$n] $name: not re-derived (a net it needs is neither cached nor kept in figures/trained/)"
            continue
        fi
        if grep -q DeadlineReached "outputs/$name.ipynb"; then
            echo "reproduce.sh: chunk ended in '$name' (--chunk-seconds $CHUNK); trained models are cached: run the same command with --resume to continue" >&2
            exit 75
        fi
        mkdir -p "$OUT/failed"                   # under --out, where the user asked for outputs
        mv "outputs/$name.ipynb" "$OUT/failed/$name.ipynb"
        die "notebook '$name' failed; the executed notebook with the error is $OUT/failed/$name.ipynb"
    fi
    echo "$name" >> "$FINISHED"
    mkdir -p "$dest/$name"                                # a lesson writes no other output
    [[ ! -f "$LIPCORE_NET_LOG" ]] || mv "$LIPCORE_NET_LOG" "$dest/$name/nets.jsonl"
    # the results, readable on GitHub/JupyterLab, without progress-bar output
    "$PY" -m lipcore.executed "outputs/$name.ipynb" "$dest/$name/$name.ipynb" >/dev/null
    [[ "$params" == "-" ]] || "$PY" -m lipcore.summary compare "$PREVIOUS/$name" "$dest/$name"
    echo "[$i/$n] $name done in $(( $(date +%s) - start )) s"
done 3< "$PLAN"
export MPLBACKEND=Agg
if [[ -n "$QUICK" ]]; then
    "$PY" -m lipcore.summary print "${DONE[@]}" | tee "$OUT/SUMMARY.md"
    echo
    echo "reproduce.sh: quick check done in $(( $(date +%s) - RUN_START )) s; summary in $OUT/SUMMARY.md"
    exit 0
fi
for root in "${ROOTS[@]}"; do
    "$PY" -m lipcore.report "$root" >/dev/null
    echo "reproduce.sh: report written to $root/REPORT.md"
done
"$PY" -m lipcore.manifest write --out "$OUT" >/dev/null
echo "reproduce.sh: what each result was made with: $OUT/MANIFEST.json"
"$PY" -m lipcore.site "$OUT" >/dev/null
echo "reproduce.sh: HTML book written to $OUT/site/index.html"
echo
"$PY" -m lipcore.summary print "${DONE[@]}"
