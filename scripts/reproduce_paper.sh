#!/usr/bin/env bash
# Sweeps that regenerate the CHORDS paper's tables and figures on a multi-GPU machine.
# Usage: bash scripts/reproduce_paper.sh {table1|table2|table3|table4|fig4|digits} [extra hydra overrides]
# Each sweep writes run folders under runs/<name>/ (sequential references included: reference=true),
# then `python -m eval` turns them into tables and figures (see README, "Evaluate").
# Prompt lists: scripts/coco_prompts.py (Table 2: 1000 COCO2017 val captions) and
# scripts/vbench_prompts.py (Tables 1, 3, 4: VBench prompts) write them; see README.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-digits}"; shift || true
COCO="${COCO_PROMPTS:-prompts/coco1000.txt}"
VBENCH="${VBENCH_PROMPTS:-prompts/vbench_quality.txt}"
case "$what" in
  table1)  # video models x {CHORDS, ParaDIGMS, SRDS} x K in {4, 6, 8}
    python run_video_mp.py -m model=hunyuan,wan2-1,cogvideo algo=chords,paradigms,srds ngpu=4,6,8 \
      prompt_file="$VBENCH" output_base_path=runs/table1 reference=true algo.full_return=false "$@" ;;
  table2)  # image models, 1000 COCO captions
    python run_image_mp.py -m model=sd3-5,flux algo=chords,paradigms,srds ngpu=4,6,8 \
      prompt_file="$COCO" output_base_path=runs/table2 reference=true algo.full_return=false "$@" ;;
  table3)  # init-sequence ablation: the paper's presets vs uniform starts
    python run_video_mp.py -m model=hunyuan algo=chords ngpu=4,6,8 algo.init_t=preset,uniform \
      prompt_file="$VBENCH" output_base_path=runs/table3 reference=true algo.full_return=false "$@"
    python run_image_mp.py -m model=flux algo=chords ngpu=4,6,8 algo.init_t=preset,uniform \
      prompt_file="$COCO" output_base_path=runs/table3 reference=true algo.full_return=false "$@" ;;
  table4)  # step counts N on HunyuanVideo, 8 cores (presets scaled to N)
    python run_video_mp.py -m model=hunyuan algo=chords ngpu=8 model.num_inference_steps=50,75,100 \
      prompt_file="$VBENCH" output_base_path=runs/table4 reference=true "$@" ;;
  fig4)    # speedup and quality against the number of cores
    python run_video_mp.py -m model=hunyuan algo=chords,paradigms,srds ngpu=2,4,6,8 \
      prompt_file="$VBENCH" output_base_path=runs/fig4 reference=true "$@" ;;
  digits)  # the whole pipeline on a laptop: the embedded digits model on CPU processes
    python run_image_mp.py -m model=digits algo=chords,paradigms,srds ngpu=2,4 \
      output_base_path=runs/digits reference=true "$@" ;;
  *) echo "usage: $0 {table1|table2|table3|table4|fig4|digits} [hydra overrides]" >&2; exit 2 ;;
esac
