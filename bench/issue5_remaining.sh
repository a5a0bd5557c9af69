#!/usr/bin/env bash
# The issue-5 runs the 2026-11-25 session could not make within its device time, in priority order.
# One part per device call (each well under the 10-minute limit, at most 8 files back under $OUT):
#     PYTHONPATH=. bash bench/issue5_remaining.sh 1      (then 2, 3, 4)
# Every script saves its rows as they come, so a part cut by a timeout keeps what it measured.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results/raw}
mkdir -p "$OUT"
run() { local limit=$1 name=$2; shift 2; timeout "$limit" python "$@" --json "$OUT/$name.json" 2>&1 | grep -v -i warn | grep -E "^\{|^\|" ; }
case "${1:-1}" in
1)  # forward: the GPT-2 B1 gap, interleaved; the missing Llama B4 pair; the B1 shapes of OPT and T5
    run 90 fwd_gpt2_b1 bench/models.py gpt2 --shapes 1x1024 --forms inductor_sdpa,backend_inductor,inductor_sdpa,backend_inductor --reps 50
    run 110 fwd_llama_b4 bench/models.py llama --shapes 4x2048 --forms inductor_sdpa,backend_inductor
    run 170 fwd_opt_b1 bench/models.py opt --shapes 1x1024
    run 190 fwd_t5_b1 bench/models.py t5 --shapes 1x512 ;;
2)  # generate() tokens/s: Inductor forms for GPT-2, every form for Llama and OPT
    run 120 gen_gpt2 bench/models.py gpt2 --generate --generate-forms eager,inductor_sdpa,backend_inductor
    run 220 gen_llama bench/models.py llama --generate
    run 200 gen_opt bench/models.py opt --generate ;;
3)  # training step time and peak memory for the other three models
    run 200 train_llama bench/training.py llama --shape 4x1024 --reps 5
    run 170 train_opt bench/training.py opt --shape 8x1024 --reps 5
    run 190 train_t5 bench/training.py t5 --shape 8x512 --reps 5 ;;
4)  # largest batch, eager vs backend, one dynamic-batch compile per model and length
    run 280 maxb_gpt2 bench/training.py gpt2 --forms '' --max-batch 1024,2048 --dynamic-batch
    run 280 maxb_llama bench/training.py llama --forms '' --max-batch 1024,2048 --dynamic-batch ;;
esac
