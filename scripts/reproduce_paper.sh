#!/usr/bin/env bash
# The sweeps behind the CHORDS paper's tables and figures: each target runs an experiment config
# (configs/experiment/NAME.yaml, which holds the sweep) as a Hydra multirun, then prints the eval
# command that turns its run folders into the table or figure.
#
#   bash scripts/reproduce_paper.sh TARGET [hydra overrides ...]
#   bash scripts/reproduce_paper.sh --embedded TARGET [hydra overrides ...]
#
# TARGET: table1 | table2 | table3 | table4 | fig4 | fig5 | all | digits
#   table1  video models x {CHORDS, ParaDIGMS, SRDS} x K=4,6,8, VBench prompts x 5 seeds
#   table2  image models x methods x K, 1000 COCO captions
#   table3  init-sequence ablation: presets vs uniform (HunyuanVideo = table3, Flux = table3_image)
#   table4  HunyuanVideo, K=8, N=50,75,100
#   fig4    scaling with K=2..8 (HunyuanVideo, all methods)
#   fig5    convergence of the streamed hits (HunyuanVideo = fig5, SD3.5-Large = fig5_image)
#   digits  the whole pipeline on a laptop (embedded digits model, CPU processes)
# --embedded runs the same experiment on the embedded models (image experiments on model=digits,
# video ones on model=moving-digits) in one process (hardware=local), one prompt per digit class
# x 10 seeds, into runs/embedded/TARGET.
# Extra overrides go to every sweep of the target, e.g. hydra/launcher=slurm hydra.launcher.partition=gpu.
# Prompt lists: python scripts/vbench_prompts.py (prompts/vbench_quality.txt) and
# python scripts/coco_prompts.py (prompts/coco1000.txt); see README "Reproduce the paper".
set -euo pipefail
cd "$(dirname "$0")/.."
embedded=0
if [ "${1:-}" = "--embedded" ]; then embedded=1; shift; fi
what="${1:-digits}"; shift || true

sweep() {  # sweep ENTRY EXPERIMENT TARGET [overrides...]
  local entry="$1" exp="$2" target="$3"; shift 3
  local extra=()
  if [ "$embedded" = 1 ]; then
    local model=digits
    [ "$entry" = run_video_mp.py ] && model=moving-digits
    extra=("model=$model" hardware=local prompt_file=prompts/digits_classes.txt "model.seed=range(0,10)"
           "output_base_path=runs/embedded/$target")
  fi
  echo "+ python $entry -m +experiment=$exp ${extra[*]} $*" >&2
  python "$entry" -m "+experiment=$exp" "${extra[@]}" "$@"
}

evalhint() {  # evalhint TARGET EVAL-ARGS
  local root="runs/$1"
  [ "$embedded" = 1 ] && root="runs/embedded/$1"
  echo "done; evaluate with: python -m eval runs=[$root] out=eval_$1 $2" >&2
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
            bash "$0" $([ "$embedded" = 1 ] && echo --embedded) "$t" "$@"
          done ;;
  digits) # the whole pipeline on a laptop: the embedded digits model on CPU processes
          python run_image_mp.py -m model=digits algo=chords,paradigms,srds ngpu=2,4 \
            output_base_path=runs/digits reference=true "$@" ;;
  *) echo "usage: $0 [--embedded] {table1|table2|table3|table4|fig4|fig5|all|digits} [hydra overrides]" >&2; exit 2 ;;
esac
