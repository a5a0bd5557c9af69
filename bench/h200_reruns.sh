#!/usr/bin/env bash
# The H200 measurements of generate(), training steps, the largest batch, and their profiles, grouped so that each
# part fits one device call (under 10 minutes, at most 8 files back under $OUT):
#     PYTHONPATH=. bash bench/h200_reruns.sh N      (N = 1 ... 29; bench/RESULTS.md says which rows each part made,
#                                                    and under "Not measured" which are still to run)
# Each part measures the backend beside its own baseline in the same process, so its ratios hold on whatever GPU
# runs it. Parts that say `with_524` run under transformers 5.24, carried as a wheel in .whl/
# (`pip download --no-deps transformers==5.24.0 -d .whl`; name .whl in the call's carry).
# Every script saves its rows as they come, so a part cut by a timeout keeps what it measured.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results/raw}
mkdir -p "$OUT"
run() { local limit=$1 name=$2; shift 2; timeout "$limit" python "$@" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1;
        grep -E "^\{|^\||Error|sdpa_rewrite" "$OUT/$name.log" | grep -v "^  File" | tail -20 ; }
with_524() { python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/tf524 .whl/transformers-5.24*.whl \
             && PYTHONPATH=/tmp/tf524:. "$@" ; }
case "${1:-1}" in
1)  # generate() of GPT-2: the backend under Inductor beside eager and Inductor on native sdpa; OPT training
    # (use_cache=False) under transformers 5.24 (5.17's rows: `bench/training.py opt --shape 8x1024 --reps 5
    # --forms inductor_sdpa,backend_inductor`, H200 run 1); generate() for Llama under Inductor
    run 170 gen_gpt2 bench/models.py gpt2 --generate --generate-forms eager,inductor_sdpa,backend_inductor
    with_524 run 120 train_opt_tf524 bench/training.py opt --shape 8x1024 --reps 5 --forms inductor_sdpa,backend_inductor
    run 250 gen_llama bench/models.py llama --generate --generate-forms inductor_sdpa,backend_inductor ;;
2)  # first the CUDA check of fully masked rows (the additive-mask fix of 2026-12-01 has not run on CUDA yet);
    # T5's training step again with 20 timed steps (run 4 of 2026-12-01 had an IQR of 29 ms on 5) and a profile of
    # each form's kernels; T5 generate()
    timeout 100 python bench/cuda_masks.py > "$OUT/cuda_masks.txt" 2>&1; tail -30 "$OUT/cuda_masks.txt"
    run 270 train_t5 bench/training.py t5 --shape 8x512 --reps 20 --forms inductor_sdpa,backend_inductor --profile-rows 14
    run 190 gen_t5 bench/models.py t5 --generate --generate-forms eager,inductor_sdpa,backend_inductor ;;
3)  # GPT-2's generate() with the new empty-row check and with it off, beside Inductor on native sdpa (interleaved);
    # generate() for OPT
    run 250 gen_gpt2_rows bench/models.py gpt2 --generate \
        --generate-forms inductor_sdpa,backend_inductor_kernel_rows,backend_inductor,inductor_sdpa
    run 300 gen_opt bench/models.py opt --generate --generate-forms eager,inductor_sdpa,backend_inductor ;;
4)  # the largest batch for Llama (each form and length is one dynamic-batch compile)
    run 430 maxb_llama bench/training.py llama --forms '' --max-batch 1024,2048 --dynamic-batch ;;
5)  # why generate() under the backend is slower on the GPU (parts 2-3: GPT-2, T5, OPT): recompiles, each graph's
    # sites and kernels, and the top operators of one profiled generate() per form
    for spec in "gpt2 230 backend_inductor,inductor_sdpa,backend_inductor_kernel_rows" "t5 150 backend_inductor,inductor_sdpa"; do
        set -- $spec
        TORCH_LOGS=recompiles timeout "$2" python bench/profile_generate.py "$1" --forms "$3" > "$OUT/prof_gen_$1.log" 2>&1
        grep -E "^==|^-- graph|Recompiling|guard failure|    - " "$OUT/prof_gen_$1.log" | cut -c1-220 | tail -40
    done ;;
6)  # generate() with every form in a process of its own, two rounds in turn (run 8 showed the tokens/s of one
    # form moving more between two slots of a process than between forms); under 5.17, and GPT-2 under 5.24
    run 300 gen_gpt2_iso bench/models.py gpt2 --generate --isolate 2 --generate-reps 5 --generate-forms inductor_sdpa,backend_inductor
    run 280 gen_t5_iso bench/models.py t5 --generate --isolate 2 --generate-reps 5 --generate-forms inductor_sdpa,backend_inductor ;;
7)  # OPT the same way; GPT-2 under transformers 5.24 (the decode mask proven all-visible: no check)
    run 330 gen_opt_iso bench/models.py opt --generate --isolate 2 --generate-reps 5 --generate-forms inductor_sdpa,backend_inductor
    with_524 run 150 gen_gpt2_tf524 bench/models.py gpt2 --generate --generate-reps 5 --generate-forms backend_inductor,inductor_sdpa ;;
8)  # OPT's training step under 5.17 again, 20 steps and a profile (run 1: 5 steps, IQR 19 ms); the backend's
    # largest Llama batch at S2048
    run 250 train_opt bench/training.py opt --shape 8x1024 --reps 20 --forms inductor_sdpa,backend_inductor,backend_inductor_kernel_rows --profile-rows 14
    run 320 maxb_llama_2048 bench/training.py llama --forms '' --max-batch 2048 --max-batch-forms backend_inductor --dynamic-batch ;;
9)  # where OPT's 5.17 training step spends the backend's extra 392 MiB (run 1 of 2026-12-02: 13423 MiB against
    # 13031 native and 13039 with empty_rows="kernel"); OPT generate() with each form in its own process
    timeout 200 python bench/step_memory.py opt --shape 8x1024 \
        --forms inductor_sdpa,backend_inductor,backend_inductor_kernel_rows > "$OUT/step_memory_opt.log" 2>&1
    grep -vE "Warning|warn" "$OUT/step_memory_opt.log" | cut -c1-200 | tail -45
    run 330 gen_opt_iso bench/models.py opt --generate --isolate 2 --generate-reps 5 --generate-forms inductor_sdpa,backend_inductor ;;
10) # GPT-2's decode under transformers 5.24, where the decode mask is proven all-visible (no empty-row check):
    # kernels per token against Inductor on native sdpa (part 5 did this under 5.17: 206 against 185)
    with_524 timeout 220 python bench/profile_generate.py gpt2 --forms backend_inductor,inductor_sdpa --rows 8 \
        > "$OUT/prof_gen_gpt2_tf524.log" 2>&1
    grep -E "^==|^-- graph" "$OUT/prof_gen_gpt2_tf524.log" | cut -c1-220 | tail -12 ;;
11) # padded batches on FlexAttention in the whole model (one BlockMask shared by the layers) and with right padding
    # (regional); attention alone with right padding and with a bool mask (flex_bool: no score_mod read)
    run 150 padded_whole bench/models.py llama8 --shapes 2x4096,1x8192 --padded \
        --forms inductor_sdpa,backend_inductor,backend_inductor_noflex
    run 120 padded_regional_right bench/regional.py llama8 --shape 2x4096 --train-shape '' --padded right \
        --forms inductor_sdpa,backend_inductor,backend_inductor_noflex --reps 10
    run 150 padded_attention_right bench/padded_attention.py --seqs 4096,8192 --pads right,left \
        --forms sdpa_additive,sdpa_bool,flex_additive,flex_bool --reps 10 --budget-s 130
    # a BlockMask entry per batch row (each row's padding skipped) in a process of its own: it faulted before
    run 90 padded_attention_rows bench/padded_attention.py --seqs 4096,8192 --pads right,left \
        --forms sdpa_additive,flex_additive,flex_rows --reps 10 --budget-s 70 ;;
12) # training steps of the FlexAttention models beside eager + Inductor and transformers' own flex path; gptossw
    # with bf16 weights: under autocast its fp32 experts take transformers' MoE fallback, whose backward Inductor
    # fails on in every form (RESULTS.md, 2026-12-03)
    run 270 flex_train_gemma2w bench/flex_models.py gemma2w --shape none --train-shape 1x4096 \
        --forms eager_inductor,backend,flex_inductor --budget-s 240
    run 270 flex_train_gptossw_bf16 bench/flex_models.py gptossw --shape none --train-shape 1x4096 --train-dtype bf16 \
        --forms eager_inductor,backend,flex_inductor --budget-s 240 ;;
13) # forward and backward of the flex sites against an fp32 reference in fp16 (the bf16 rows ran on 2026-12-03;
    # the gpt-oss-like training step that used to follow is part 12's, with bf16 weights)
    run 170 cuda_flex_fp16 bench/cuda_flex.py --dtypes float16 ;;
17) # the catalog on CUDA (T5's position buckets and xglm's clamp since the last sweep), fully masked rows; the
    # whole-model forward rows that later changes must not regress (GPT-2 B8 S1024, Llama-style B4 S2048, OPT, T5)
    timeout 200 python bench/cuda_catalog.py > "$OUT/cuda_catalog.txt" 2>&1; tail -12 "$OUT/cuda_catalog.txt"
    timeout 60 python bench/cuda_masks.py > "$OUT/cuda_masks.txt" 2>&1; tail -8 "$OUT/cuda_masks.txt"
    run 280 whole_models bench/models.py gpt2 llama8 opt t5 --forms inductor_sdpa,backend_inductor --reps 20 ;;
18) # ALiBi and a T5-style bias beside a causal mask: SDPA's dense float mask against flex reading it, ALiBi from the
    # indices, and ALiBi read per key as Bloom lays it out (flex_alibi_keys, since the 2026-12-03 run): whether a bias
    # constant along the query dim should go to flex. `keys` runs only that question, beside its baselines
    if [ "${2:-}" = keys ]; then
        run 150 bias_attention_keys bench/bias_attention.py --biases alibi --reps 10 --budget-s 130 \
            --forms sdpa_causal,sdpa_bias,flex_alibi_index,flex_alibi_keys
    else
        run 260 bias_attention bench/bias_attention.py --reps 10 --budget-s 230
    fi ;;
19) # a BlockMask entry per batch row inside models (plan.DENSE_FLEX_PER_ROW, the default since this part ran clean
    # on 2026-12-03) against one BlockMask for the whole batch (_flex_union), then native sdpa; whole model and each
    # layer alone
    run 200 padded_rows_whole bench/models.py llama8 --shapes 2x4096,4x4096 --padded \
        --forms backend_inductor_flex_union,backend_inductor,inductor_sdpa
    run 150 padded_rows_regional bench/regional.py llama8 --shape 4x4096 --train-shape '' --padded left \
        --forms backend_inductor_flex_union,backend_inductor,inductor_sdpa --reps 10 ;;
20) # compile time of the flex models since the band's tile lists became an opaque op (no Triton sort network),
    # caches cold, beside transformers' sdpa and flex paths; forward only
    export TORCHINDUCTOR_FORCE_DISABLE_CACHES=1
    run 220 flex_compile_mistralw bench/flex_models.py mistralw --shape 1x16384 --train-shape none \
        --forms sdpa_inductor,backend --reps 5 --budget-s 190
    run 220 flex_compile_gemma2w bench/flex_models.py gemma2w --shape 1x8192 --train-shape none \
        --forms sdpa_inductor,backend --reps 5 --budget-s 190 ;;
22) # transformers' own flex path on the Mistral-like forward at S16384 (never run: the issue's anchor compiled it in
    # 208 s), caches cold, beside its sdpa path
    export TORCHINDUCTOR_FORCE_DISABLE_CACHES=1
    run 400 flex_compile_mistralw_transformers bench/flex_models.py mistralw --shape 1x16384 --train-shape none \
        --forms sdpa_inductor,flex_inductor --reps 5 --budget-s 150 ;;
21) # the first training step's compile since BlockMask's q lists come from the opaque ops too (torch 2.11 compiled
    # their sort in training graphs), caches cold, beside transformers' flex path (part 16: 33.9 s against 44.4 s)
    export TORCHINDUCTOR_FORCE_DISABLE_CACHES=1
    run 300 flex_train_compile_mistralw bench/flex_models.py mistralw --shape none --train-shape 1x8192 \
        --forms backend,flex_inductor --reps 5 --budget-s 270 ;;
23) # the band's tile lists as traced tensor ops without a sort (the opaque op of parts 20-22 cost ~0.8 ms of launches
    # a forward): ALiBi read per key beside its baselines, then the backend's forward with caches cold (its
    # baselines: parts 20 and 22)
    bash "$0" 18 keys
    export TORCHINDUCTOR_FORCE_DISABLE_CACHES=1
    run 90 flex_traced_gemma2w bench/flex_models.py gemma2w --shape 1x8192 --train-shape none --forms backend --reps 10
    run 100 flex_traced_mistralw bench/flex_models.py mistralw --shape 1x16384 --train-shape none --forms backend \
        --reps 10 ;;
24) # ALiBi read as rows along the keys (key_rows.py): first the CUDA check of the rows on flex, forward and backward
    # (catalog entries, tiny Bloom and MPT); then a Bloom-like model's forward and training step, the backend beside its
    # SDPA-only form (the dense bias) and eager + Inductor (transformers' Bloom has no sdpa or flex path)
    run 150 cuda_flex_alibi bench/cuda_flex.py --cases alibi/,bloom,mpt
    run 300 alibi_bloomw bench/flex_models.py bloomw --shape 1x8192 --train-shape 1x4096 \
        --forms eager_inductor,backend_sdpa,backend --budget-s 270 ;;
26) # the Bloom-like model twice as long: forward at S16384, training step at S8192, the backend beside its SDPA form
    run 280 alibi_bloomw_long bench/flex_models.py bloomw --shape 1x16384 --train-shape 1x8192 \
        --forms backend_sdpa,backend --budget-s 250 ;;
27) # ALiBi's rows read from an all-ones attention_mask (the split taken at run time), the Bloom-like forward beside
    # the SDPA form; the fp16 padded rows of tiny Bloom / MPT since the swamped-row fix, with the rows' check
    run 200 alibi_bloomw_ones_mask bench/flex_models.py bloomw --shape 1x8192 --train-shape none --ones-mask \
        --forms backend_sdpa,backend --budget-s 180
    run 150 cuda_flex_bloom_mpt bench/cuda_flex.py --cases bloom,mpt ;;
28) # part 27's second half (the fp16 padded rows of tiny Bloom / MPT since the swamped-row fix); then what is live at
    # the peak of a Gemma2-like training step, the backend beside transformers' flex path (+32 MiB in part 12)
    run 150 cuda_flex_bloom_mpt bench/cuda_flex.py --cases bloom,mpt
    timeout 330 python bench/step_memory.py gemma2w --shape 1x4096 --at-peak --top 16 \
        --forms inductor_flex,backend_inductor > "$OUT/step_peak_gemma2w.log" 2>&1
    grep -vE "Warning|warn" "$OUT/step_peak_gemma2w.log" | cut -c1-220 | tail -45 ;;
29) # a padded Bloom-like batch (no split: the rest is causal + padding) at the lengths where its "input mask" goes to
    # the dense-mask flex path: the backend beside its SDPA form
    run 190 alibi_bloomw_padded_4096 bench/flex_models.py bloomw --shape 1x4096 --left-pad 1024 --train-shape none \
        --forms eager_inductor,backend_sdpa,backend --budget-s 160
    run 160 alibi_bloomw_padded_8192 bench/flex_models.py bloomw --shape 1x8192 --left-pad 2048 --train-shape none \
        --forms backend_sdpa,backend --budget-s 140 ;;
25) # the Mistral-like forward with the band's tile lists traced (part 23's row that the budget cut), then part 21
    export TORCHINDUCTOR_FORCE_DISABLE_CACHES=1
    run 110 flex_traced_mistralw bench/flex_models.py mistralw --shape 1x16384 --train-shape none --forms backend \
        --reps 10
    bash "$0" 21 ;;
16) # Mistral-like training
    run 300 flex_train_mistralw bench/flex_models.py mistralw --shape none --train-shape 1x8192 \
        --forms eager_inductor,backend,flex_inductor --budget-s 270 ;;
14) # the tools users run: generate() with its tokens compared in fp32, Trainer, timm, GPT-2's forward peak by
    # allocating line
    run 560 integrations bench/integrations.py --parts generate,trainer,timm,gpt2mem --budget-s 470 ;;
esac
