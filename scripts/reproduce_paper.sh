#!/usr/bin/env bash
# The sweeps behind the CHORDS paper's tables and figures: each target runs an experiment config
# (configs/experiment/NAME.yaml, which holds the sweep) as a Hydra multirun, then prints the eval
# command that turns its run folders into the table or figure.
#
#   bash scripts/reproduce_paper.sh TARGET [hydra overrides ...]
#   bash scripts/reproduce_paper.sh --embedded [--seeds S] TARGET [hydra overrides ...]
#
# TARGET: table1 | table2 | table3 | table4 | fig4 | fig5 | all | digits
#   table1  video models x {CHORDS, ParaDIGMS, SRDS} x K=4,6,8, VBench prompts x 5 seeds
#   table2  image models x methods x K, 1000 COCO captions
#   table3  init-sequence ablation: presets vs uniform (HunyuanVideo = table3, Flux = table3_image)
#   table4  HunyuanVideo, K=8, N=50,75,100
#   fig4    scaling with K=2..8 (HunyuanVideo, all methods)
#   fig5    convergence of the streamed hits (HunyuanVideo = fig5, SD3.5-Large = fig5_image)
#   digits  the whole pipeline on a laptop (embedded digits model; hardware=auto: batched on a CPU)
# --embedded runs the same experiment on the embedded models (image experiments on model=digits,
# video ones on model=moving-digits, prompts naming a direction) in one process with the K states
# of a round in one forward (hardware=batched, the CPU setting faster than sequential), one prompt
# per digit class x S seeds (default 3, a reduced protocol; --seeds 10 is the full one, about 3x
# longer), into runs/embedded/TARGET, then evaluates offline (the embedded quality metrics, no
# CLIP or VBench weights) into eval_embedded/TARGET. It first prints how many runs each sweep
# makes and, once earlier runs exist, about how long it takes (python run_*_mp.py --dry-run).
# Extra overrides go to every sweep of the target, e.g. hydra/launcher=slurm hydra.launcher.partition=gpu.
# Prompt lists: python scripts/vbench_prompts.py (prompts/vbench_quality.txt) and
# python scripts/coco_prompts.py (prompts/coco1000.txt); see README "Reproduce the paper".
set -euo pipefail
cd "$(dirname "$0")/.."
embedded=0
seeds=3
if [ "${1:-}" = "--embedded" ]; then embedded=1; shift; fi
if [ "$embedded" = 1 ] && [ "${1:-}" = "--seeds" ]; then
  case "${2:-}" in ''|*[!0-9]*|0) echo "--seeds ${2:-}: give a whole number >= 1" >&2; exit 2 ;; esac
  seeds="$2"; shift 2
fi
what="${1:-digits}"; shift || true

sweep() {  # sweep ENTRY EXPERIMENT TARGET [overrides...]
  local entry="$1" exp="$2" target="$3"; shift 3
  local extra=()
  if [ "$embedded" = 1 ]; then
    local model=digits prompts=prompts/digits_classes.txt
    if [ "$entry" = run_video_mp.py ]; then model=moving-digits; prompts=prompts/moving_digits_classes.txt; fi
    extra=("model=$model" hardware=batched "prompt_file=$prompts" "model.seed=range(0,$seeds)"
           "output_base_path=runs/embedded/$target")
    echo "+ python $entry -m +experiment=$exp ${extra[*]} $* --dry-run" >&2
    python "$entry" -m "+experiment=$exp" "${extra[@]}" "$@" --dry-run >&2
  fi
  echo "+ python $entry -m +experiment=$exp ${extra[*]} $*" >&2
  python "$entry" -m "+experiment=$exp" "${extra[@]}" "$@"
}

evalhint() {  # evalhint TARGET EVAL-ARGS: the eval command (real models), or eval itself (--embedded)
  if [ "$embedded" = 1 ]; then  # offline: the embedded quality metrics, tables and figures
    local tables
    tables=$(printf '%s\n' $2 | grep -E '^(tables|figures)=' | tr '\n' ' ')
    echo "+ python -m eval runs=[runs/embedded/$1] out=eval_embedded/$1 $tables" >&2
    # shellcheck disable=SC2086
    python -m eval "runs=[runs/embedded/$1]" "out=eval_embedded/$1" $tables
    echo "done: eval_embedded/$1 (tables, figures, summary.md, problems.txt)" >&2
    return
  fi
  echo "done; evaluate with: python -m eval runs=[runs/$1] out=eval_$1 $2" >&2
}

case "$what" in
  table1) sweep run_video_mp.py table1 table1 "$@"
          evalhint table1 "tables=[table1] vbench.enabled=true" ;;
  table2) sweep run_image_mp.py table2 table2 "$@"
          evalhint table2 "tables=[table2] clip.enabled=true" ;;
  table3) sweep run_video_mp.py table3 table3 "$@"
          sweep run_image_mp.py table3_image table3 "$@"
          evalhint table3 "tables=[table3] figures=[figure5] vbench.enabled=true clip.enabled=true" ;;
  table4) sweep run_video_mp.py table4 table4 "$@"
          evalhint table4 "tables=[table4] vbench.enabled=true" ;;
  fig4)   sweep run_video_mp.py fig4 fig4 "$@"
          evalhint fig4 "tables=[] figures=[figure4,tradeoff,wallclock] vbench.enabled=true" ;;
  fig5)   sweep run_video_mp.py fig5 fig5 "$@"
          sweep run_image_mp.py fig5_image fig5 "$@"
          evalhint fig5 "tables=[] figures=[figure5]" ;;
  all)    for t in table1 table2 table3 table4 fig4 fig5; do
            if [ "$embedded" = 1 ]; then bash "$0" --embedded --seeds "$seeds" "$t" "$@"; else bash "$0" "$t" "$@"; fi
          done ;;
  digits) # the whole pipeline on a laptop: the embedded digits model (hardware=auto: batched without a GPU)
          python run_image_mp.py -m model=digits algo=chords,paradigms,srds ngpu=2,4 \
            output_base_path=runs/digits reference=true "$@" ;;
  *) echo "usage: $0 [--embedded [--seeds S]] {table1|table2|table3|table4|fig4|fig5|all|digits} [hydra overrides]" >&2; exit 2 ;;
esac
