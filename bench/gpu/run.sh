#!/usr/bin/env bash
# One-shot GPU benchmark on a machine with NVIDIA GPUs and no network.
#   bench/gpu/run.sh PLAN...      PLAN = setup | smoke | stacks7b | stacks1b | memory | full1b | full1b_tf
#                                        | optim8 | memgap | memsnap | memory_nocompile | nocompile
#                                        | allocator | startlog | cap12 | resume | ddp | gputest | packed
#                                        | ddp2 | ddp2_solo | ddp2_pair | gputest2 | split12
#                                        | heldout | startup | prep12 (heldout + startup, 2 GPUs)
# Installs the carried wheels (.whl/, built by ../shared/gpu/fetch_wheels.sh) into .site/, builds
# random-initialised models under $BENCH_DIR, runs the plans and appends JSON lines to
# $OUT/results.jsonl (or bench/gpu/results.jsonl when $OUT is unset).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd); cd "$ROOT"
export BENCH_DIR=${BENCH_DIR:-/tmp/fto-bench}
export BENCH_RESULTS=${OUT:-$ROOT/bench/gpu}/results.jsonl
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$BENCH_DIR"
PY=python3
B="$PY bench/gpu/bench.py"

setup() {
  if [[ ! -f .site/.done ]]; then
    $PY -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target "$ROOT/.site" .whl/*.whl
    # the trainer itself, exactly as the image installs it (no deps: the GPU image has them)
    $PY -m pip install -q --no-index --no-deps --no-build-isolation --target "$ROOT/.site" ./trainer-image
    $PY -m compileall -q -j 0 "$ROOT/.site" >/dev/null 2>&1
    touch .site/.done
  fi
  export PYTHONPATH="$ROOT/.site"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c 'import torch, transformers, trl, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__, "peft", peft.__version__, "gpus", torch.cuda.device_count())'
  [[ -n ${BENCH_PEAK_TFLOPS:-} ]] || export BENCH_PEAK_TFLOPS=$($B peak | sed -n 's/.*"bf16_tflops": \([0-9.]*\).*/\1/p')
  echo "bf16 peak ${BENCH_PEAK_TFLOPS} TFLOP/s"
}

model() { # geometry
  $B make-model --geometry "$1" --out "$BENCH_DIR/m$1" | grep RESULT
}
data() { # shape vocab n
  local f="$BENCH_DIR/d-$1-$2.jsonl"
  [[ -f $f ]] || $B make-data --shape "$1" --vocab "$2" --n "$3" --out "$f" >/dev/null
  echo "$f"
}
run() { # stack geometry method shape mb [extra args]
  local stack=$1 g=$2 method=$3 shape=$4 mb=$5; shift 5
  local vocab=32768; [[ $g == 1b ]] && vocab=128256
  local f; f=$(data "$shape" "$vocab" 2000)
  FTO_T0=$(date +%s.%N) timeout 300 $B run --stack "$stack" --model "$BENCH_DIR/m$g" --model-tag "$g" \
    --method "$method" --data "$f" --data-tag "$shape" --mb "$mb" "$@" 2>&1 | grep -E '^RESULT|Error|error:' | tail -3
}
ours() { # geometry method shape gpus [mb] [cap] [extra args]
  local g=$1 m=$2 sh=$3 n=$4 mb=${5:-0} cap=${6:-0}; shift $(( $# < 6 ? $# : 6 ))
  FTO_T0=$(date +%s.%N) timeout 400 $PY bench/gpu/ours.py --model "$BENCH_DIR/m$g" --model-tag "$g" \
    --method "$m" --shape "$sh" --gpus "$n" --mb "$mb" --cap-gib "$cap" "$@" 2>&1 | grep -E '^RESULT|Error|error:' | tail -3
}

smoke()    { model 1b; run hf 1b lora fixed 8 --steps 8 --warmup 2; run unsloth 1b lora fixed 8 --steps 8 --warmup 2; }
stacks1b() { model 1b; for s in hf unsloth; do run $s 1b lora fixed 8; run $s 1b qlora fixed 8; done
             ours 1b lora fixed 1 8; run unsloth 1b lora realistic 8; ours 1b lora realistic 1 8; run hf 1b lora realistic 8; }
stacks7b_fixed() { model 7b; run hf 7b qlora fixed 4; run unsloth 7b qlora fixed 4; ours 7b qlora fixed 1 4; }
stacks7b_more() { model 7b; ours 7b qlora realistic 1; run unsloth 7b qlora realistic 4; run unsloth 7b lora fixed 4; ours 7b lora fixed 1 4; }
stacks7b() { model 7b; for s in hf unsloth; do run $s 7b qlora fixed 4; done; ours 7b qlora fixed 1 4
             run unsloth 7b lora fixed 4; ours 7b lora fixed 1 4
             run unsloth 7b qlora realistic 4; ours 7b qlora realistic 1; run hf 7b qlora realistic 4; }
memory_ours() { # per-process peaks are exact even when runs share the GPU: 4 at a time
  model 1b; model 7b
  { for seq in 512 2048; do for mb in 1 4; do echo "1b lora $seq $mb"; echo "7b qlora $seq $mb"; echo "1b qlora $seq $mb"; echo "7b lora $seq $mb"; done; done
    echo "1b full 512 1"; echo "1b full 512 4"; echo "1b full 2048 1"; echo "1b full 2048 4"; } |
  xargs -P 4 -L 1 bash -c 'timeout 400 '"$PY"' bench/gpu/ours.py --model $BENCH_DIR/m$0 --model-tag $0 --method $1 --seq $2 --mb $3 --steps 4 --warmup 1 --gpus 1 2>&1 | grep -E "^RESULT" | cut -c1-400'
}
memory()   { model 1b; model 7b; for g in 1b 7b; do for m in lora qlora; do for seq in 512 2048; do for mb in 1 4; do
               run unsloth $g $m fixed $mb --max-len $seq --steps 4 --warmup 1; done; done; done; done
             for seq in 512 2048; do for mb in 1 4; do run unsloth 1b full fixed $mb --max-len $seq --steps 4 --warmup 1; done; done; }
full1b()   { # the full rows of the planner matrix, one at a time (a full checkpoint is ~15 GB)
  model 1b
  for seq in 512 2048; do for mb in 1 4; do
    timeout 400 $PY bench/gpu/ours.py --model "$BENCH_DIR/m1b" --model-tag 1b --method full --seq $seq --mb $mb \
      --steps 6 --warmup 1 --gpus 1 2>&1 | grep -E "^RESULT" | cut -c1-3000
  done; done
  run unsloth 1b full fixed 1 --max-len 2048 --steps 6 --warmup 1
}
full1b_tf() { # the same through the transformers backend, for comparison
  model 1b
  for seq in 512 2048; do
    timeout 400 $PY bench/gpu/ours.py --model "$BENCH_DIR/m1b" --model-tag 1b --method full --seq $seq --mb 4 \
      --steps 6 --warmup 1 --gpus 1 --backend transformers 2>&1 | grep -E "^RESULT" | cut -c1-3000
  done
}
optim8() { # (c) with the optimizer (b) uses, to compare memory like for like
  model 7b; model 1b
  FTO_T0=$(date +%s.%N) timeout 400 $PY bench/gpu/ours.py --model "$BENCH_DIR/m7b" --model-tag 7b --method qlora \
    --shape fixed --gpus 1 --mb 4 --optimizer adamw_8bit 2>&1 | grep -E '^RESULT' | cut -c1-1500
  FTO_T0=$(date +%s.%N) timeout 400 $PY bench/gpu/ours.py --model "$BENCH_DIR/m1b" --model-tag 1b --method lora \
    --shape fixed --gpus 1 --mb 8 --optimizer adamw_8bit 2>&1 | grep -E '^RESULT' | cut -c1-1500
}
memgap() { # where (c)'s extra memory over (b) comes from, on 1B LoRA (fast): (b) with (c)'s
  # optimizer, and (c) with TRL's gradient checkpointing flag on as (b) leaves it (TRL's default)
  model 1b
  run unsloth 1b lora fixed 8 --optim adamw_torch
  run unsloth 1b lora fixed 8
  FTO_T0=$(date +%s.%N) timeout 400 $PY bench/gpu/ours.py --model "$BENCH_DIR/m1b" --model-tag 1b --method lora \
    --shape fixed --gpus 1 --mb 8 --keep-log 2>&1 | grep -E '^RESULT' | cut -c1-1500
  local t=.site/finetune_trainer/train.py; cp $t /tmp/train.py.orig
  sed -i 's/gradient_checkpointing=t.gradient_checkpointing and loaded.backend == "transformers",/gradient_checkpointing=t.gradient_checkpointing,/' $t
  grep -c 'gradient_checkpointing=t.gradient_checkpointing,' $t
  FTO_T0=$(date +%s.%N) BENCH_VARIANT=hf-gc timeout 400 $PY bench/gpu/ours.py --model "$BENCH_DIR/m1b" --model-tag 1b \
    --method lora --shape fixed --gpus 1 --mb 8 2>&1 | grep -E '^RESULT' | cut -c1-1500
  cp /tmp/train.py.orig $t
}
memsnap() { # what is alive at the peak, (b) against (c), 1B LoRA micro-batch 8 (bench/gpu/memsnap.py)
  model 1b
  BENCH_MEMSNAP=${OUT:-/tmp}/memsnap-b.json run unsloth 1b lora fixed 8 --steps 6 --warmup 2
  BENCH_MEMSNAP=${OUT:-/tmp}/memsnap-c.json timeout 400 $PY bench/gpu/ours.py --model "$BENCH_DIR/m1b" \
    --model-tag 1b --method lora --shape fixed --gpus 1 --mb 8 --steps 6 --warmup 2 2>&1 | grep -E '^RESULT' | cut -c1-300
  for x in b c; do $PY -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1], d['peak_live_mib'], d['max_memory_allocated_mib']); [print(f\"{t['mib']:9.1f} {t['blocks']:6d} {t['where'][:230]}\") for t in d['top'][:18]]" ${OUT:-/tmp}/memsnap-$x.json; done
}
memory_nocompile() { # the planner matrix again with block compile off (as measured: no expandable segments), 4 at a time
  model 1b; model 7b
  $PY -c "import os, sys; from pathlib import Path; sys.path.insert(0, 'bench/gpu'); import ours
for v in (128256, 32768): ours.text_dataset('fixed', v, Path(os.environ['BENCH_DIR']) / f't-fixed-{v}-words.jsonl')"
  { for seq in 512 2048; do for mb in 1 4; do echo "1b lora $seq $mb"; echo "7b qlora $seq $mb"; echo "1b qlora $seq $mb"; echo "7b lora $seq $mb"; done; done
    echo "1b lora 2048 8"; } |
  UNSLOTH_BLOCK_COMPILE=0 PYTORCH_ALLOC_CONF=expandable_segments:False BENCH_VARIANT=no-block-compile xargs -P 4 -L 1 bash -c 'timeout 400 '"$PY"' bench/gpu/ours.py --model $BENCH_DIR/m$0 --model-tag $0 --method $1 --seq $2 --mb $3 --steps 4 --warmup 1 --gpus 1 2>&1 | grep -E "^RESULT" | cut -c1-200'
}
pair() { # VARIANT [VAR=VALUE...]: (c) on 1B LoRA micro-batch 8 and 7B QLoRA micro-batch 4, fixed data
  local variant=$1; shift; local envs=("$@")
  model 1b; model 7b
  for spec in "1b lora 8" "7b qlora 4"; do set -- $spec
    env "${envs[@]}" FTO_T0=$(date +%s.%N) BENCH_VARIANT=$variant timeout 400 $PY bench/gpu/ours.py \
      --model "$BENCH_DIR/m$1" --model-tag $1 --method $2 --shape fixed --gpus 1 --mb $3 2>&1 | grep -E '^RESULT' | cut -c1-300
  done
}
# (c) without Unsloth's per-block torch.compile, as first measured (allocator without expandable segments)
nocompile() { pair no-block-compile UNSLOTH_BLOCK_COMPILE=0 PYTORCH_ALLOC_CONF=expandable_segments:False; }
# the trainer's default: block compile off, expandable segments set before CUDA starts
allocator() { pair no-block-compile+expandable; }
startlog() { # 7B QLoRA with its train log kept, to see where start-up time goes
  model 7b
  FTO_T0=$(date +%s.%N) timeout 400 $PY bench/gpu/ours.py --model "$BENCH_DIR/m7b" --model-tag 7b --method qlora \
    --shape fixed --gpus 1 --mb 4 --steps 8 --warmup 2 --keep-log 2>&1 | grep -E '^RESULT' | cut -c1-600
}
cap12()    { model 7b; ours 7b qlora fixed 1 0 12; ours 7b qlora fixed 1 0 4; }
resume()   { model 1b; model 7b; $PY bench/gpu/ours.py --resume-test --model "$BENCH_DIR/m1b" --model-tag 1b --method lora --shape fixed --gpus 1;
             $PY bench/gpu/ours.py --resume-test --model "$BENCH_DIR/m7b" --model-tag 7b --method qlora --shape fixed --gpus 1; }
ddp()      { model 7b; model 1b; ours 7b qlora fixed 2 4; ours 7b qlora fixed 1 4; ours 1b lora fixed 2 8
             ours 1b lora fixed 1 8; ours 7b qlora fixed 2 0 12; }

gputest() { # the GPU test tier (tests/gpu), one process per backend (Unsloth patches transformers
  # globally on import); FTO_GPU_BACKENDS picks them (default both); logs and junit under $OUT
  local rc=0 b code
  for b in ${FTO_GPU_BACKENDS:-unsloth transformers}; do
    FTO_GPU_BACKEND=$b timeout "${GPUTEST_TIMEOUT:-900}" $PY -m pytest tests/gpu --confcutdir=tests/gpu -p no:cacheprovider -q -rA \
      --junitxml="${OUT:-/tmp}/gputest-$b.xml" > "${OUT:-/tmp}/gputest-$b.log" 2>&1
    code=$?
    echo "gputest $b: exit $code"
    grep -E '^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed' "${OUT:-/tmp}/gputest-$b.log" | cut -c1-300
    ((code == 0)) || rc=1
  done
  return $rc
}
packed() { # realistic lengths, samples isolated: (b') Unsloth + TRL packing=True vs (c), one optimizer
  model 7b; model 1b
  run unsloth 7b qlora realistic 4 --packing --optim adamw_8bit
  BENCH_VARIANT=isolated ours 7b qlora realistic 1 4 0 --optimizer adamw_8bit
  run unsloth 1b lora realistic 8 --packing --optim adamw_8bit
  BENCH_VARIANT=isolated ours 1b lora realistic 1 8 0 --optimizer adamw_8bit
  # attention paths Unsloth offers for packed rows: per-segment SDPA vs torch's varlen flash kernel
  BENCH_VARIANT=isolated-segments-off UNSLOTH_SDPA_PACKED_SEGMENTS=0 ours 7b qlora realistic 1 4 0 --optimizer adamw_8bit
  BENCH_VARIANT=isolated-default-optim ours 7b qlora realistic 1 4
}
ddp2() { # today's defaults (block compile off, expandable segments), 1 vs 2 GPUs, uncapped and 12 GiB caps
  model 7b; model 1b
  ours 7b qlora fixed 1 4; ours 7b qlora fixed 2 4; ours 1b lora fixed 1 8; ours 1b lora fixed 2 8
  ours 7b qlora fixed 1 4 12; ours 7b qlora fixed 2 4 12; ours 1b lora fixed 1 8 12; ours 1b lora fixed 2 8 12
}
ddp7() { model 7b; ours 7b qlora fixed 1 4; ours 7b qlora fixed 2 4; }  # the headline DDP pair
ddp2_solo() { # the 1-GPU halves of ddp2 (uncapped and 12 GiB caps)
  model 7b; model 1b
  ours 7b qlora fixed 1 4; ours 1b lora fixed 1 8; ours 7b qlora fixed 1 4 12; ours 1b lora fixed 1 8 12
}
ddp2_pair() { # the 2-GPU halves of ddp2
  model 7b; model 1b
  ours 7b qlora fixed 2 4; ours 1b lora fixed 2 8; ours 7b qlora fixed 2 4 12; ours 1b lora fixed 2 8 12
}
gputest2() { # a 2-GPU machine: both backends' GPU tiers at once (GPU 0 unsloth, GPU 1 transformers),
  # then the 1-GPU halves of ddp2 on GPU 1 while GPU 0 finishes
  local o=${OUT:-/tmp}
  (CUDA_VISIBLE_DEVICES=0 FTO_GPU_BACKENDS=unsloth gputest >"$o/gputest2-unsloth.txt" 2>&1) &
  (CUDA_VISIBLE_DEVICES=1 FTO_GPU_BACKENDS=transformers gputest; CUDA_VISIBLE_DEVICES=1 ddp2_solo) >"$o/gputest2-tf.txt" 2>&1
  wait
  cat "$o/gputest2-unsloth.txt" "$o/gputest2-tf.txt"
}
learn2() { # a 2-GPU machine: the LoRA/QLoRA learning cases (+ merge) of both backends for two
  # learn-model geometries at once (GPU 0 unsloth, GPU 1 transformers), beside split12
  local o=${OUT:-/tmp} g b dev
  for g in 64,2,4,2 128,2,8,4; do for b in unsloth transformers; do
    dev=0; [[ $b == transformers ]] && dev=1
    (CUDA_VISIBLE_DEVICES=$dev FTO_GPU_BACKEND=$b FTO_GPU_LEARN_GEOMETRY=$g timeout 420 $PY -m pytest tests/gpu \
       --confcutdir=tests/gpu -p no:cacheprovider -q -rA -k "learns and not full" \
       --junitxml="$o/learn-$b-${g//,/-}.xml" >"$o/learn-$b-${g//,/-}.log" 2>&1; echo "learn $b $g: exit $?") &
  done; done
  split12
  wait
  for f in "$o"/learn-*.log; do echo "== $f"; grep -E '^(PASSED|FAILED|ERROR)|AssertionError|passed|failed' "$f" | cut -c1-300; done
}
learnq() { # the QLoRA learning case of both backends, geometry $1, both backends at once
  local o=${OUT:-/tmp} b dev g=${LEARN_GEOMETRY:-64,2,4,2}
  for b in unsloth transformers; do
    dev=0; [[ $b == transformers ]] && dev=1
    (CUDA_VISIBLE_DEVICES=$dev FTO_GPU_BACKEND=$b FTO_GPU_LEARN_GEOMETRY=$g timeout 300 $PY -m pytest tests/gpu \
       --confcutdir=tests/gpu -p no:cacheprovider -q -rA -k "learns and qlora" \
       --junitxml="$o/learnq-$b.xml" >"$o/learnq-$b.log" 2>&1; echo "learnq $b $g: exit $?") &
  done
  wait
  for f in "$o"/learnq-*.log; do echo "== $f"; grep -E '^(PASSED|FAILED|ERROR)|AssertionError|passed|failed' "$f" | cut -c1-300; done
}
split12() { # model split (device_map balanced) of 7B bf16 LoRA over 2 GPUs capped at 12 GiB each
  model 7b
  BENCH_VARIANT=model-split FTO_T0=$(date +%s.%N) timeout 500 $PY bench/gpu/ours.py --model "$BENCH_DIR/m7b" \
    --model-tag 7b --method lora --shape fixed --gpus 2 --mb 0 --cap-gib 12 --seq 2048 --steps 8 --warmup 2 \
    2>&1 | grep -E '^RESULT|Error|error:' | cut -c1-1500
}
heldout() { # planner held-out check (issue 12 item 5): geometries the constants were NOT fitted on,
  # LoRA/QLoRA r 64 at seq 1024 (micro-batch 4) and 4096 (micro-batch 1), 4 processes at a time
  # (per-process peaks are exact when runs share a GPU); estimate/measured printed, no refit
  model qwen3b; model gemma2b
  { for g in qwen3b gemma2b; do for m in lora qlora; do echo "$g $m 1024 4"; echo "$g $m 4096 1"; done; done; } |
  xargs -P "${HELDOUT_PAR:-4}" -L 1 bash -c 'BENCH_VARIANT=heldout timeout 300 '"$PY"' bench/gpu/ours.py --model $BENCH_DIR/m$0 \
    --model-tag $0 --method $1 --seq $2 --mb $3 --lora-r 64 --steps 4 --warmup 1 --gpus 1 2>&1 | grep -E "^RESULT" | cut -c1-400'
  $PY bench/gpu/heldout.py "$BENCH_RESULTS"
}
startup() { # process start -> first step, 7B QLoRA, cold page cache for the model AND the installed
  # libraries (evicted with posix_fadvise, no root), without and with the weight prefetch
  # (STARTUP_RUNS, default "0 1"; "0 1 0 1" for a repeat); the train logs are kept under $OUT
  model 7b
  local pf
  for pf in ${STARTUP_RUNS:-0 1}; do
    $B evict "$BENCH_DIR/m7b" "$ROOT/.site" "$(dirname "$($PY -c 'import torch; print(torch.__file__)')")/.."
    FTO_PREFETCH=$pf BENCH_VARIANT=prefetch-$pf${STARTUP_TAG:-} FTO_T0=$(date +%s.%N) timeout 300 $PY bench/gpu/ours.py \
      --model "$BENCH_DIR/m7b" --model-tag 7b --method qlora --shape fixed --gpus 1 --mb 4 --steps 4 --warmup 1 \
      --keep-log 2>&1 | grep -E '^RESULT|Error' | cut -c1-400
    [[ -n ${OUT:-} ]] && for f in "$OUT"/ours-7b-qlora-fixed-1-4-*.log; do [[ -f $f ]] && mv "$f" "$OUT/startup-$pf-$(date +%s).log"; done
  done
  $PY - "$BENCH_RESULTS" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"prefetch-' in l]
for r in rows:
    print(r.get("variant"), "first step", r.get("first_step_seconds"), "s; prepare", r.get("prepare_seconds"), "s")
PYEOF
}
prep12() { # a 2-GPU machine: heldout on GPU 1 beside startup on GPU 0. The two share disk and CPU,
  # so start-up numbers from here are contended; the clean ones come from `run.sh heldout startup`
  local o=${OUT:-/tmp}
  model qwen3b; model gemma2b; model 7b
  (CUDA_VISIBLE_DEVICES=1 heldout) >"$o/prep12-heldout.txt" 2>&1 &
  CUDA_VISIBLE_DEVICES=0 STARTUP_TAG=-contended startup
  wait
  cat "$o/prep12-heldout.txt"
}

setup
for plan in "$@"; do
  [[ $plan == setup ]] && continue
  echo "=== $plan $(date -u +%H:%M:%S)"; $plan
done
echo "=== done $(date -u +%H:%M:%S)"
[[ -f $BENCH_RESULTS ]] && $PY bench/gpu/table.py "$BENCH_RESULTS" || true
