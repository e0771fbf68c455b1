#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one command, in priority order. Each phase has a time cap,
# so a run cut short by a hard limit still leaves the finished phases' results:
#
#   1. eager bf16-mixed throughput of every configuration and the bare PyTorch loop (benchmarks/throughput.py),
#      then again with model.batch_reconstruction (one batched weight rebuild per shape);
#   2. the fast mode (configs/fast.yaml: torch.compile "reduce-overhead", no per-step host sync):
#      dense, dct4x, dct2x and the bare loop compiled the same way;
#   3. the GPU tests (tests/test_precision.py on CUDA, tests/test_compile.py with inductor), in the
#      background of phase 4;
#   4. the reproduction grids (benchmarks/reproduce.py, $STEPS steps, seeds 0 1, $JOBS runs sharing the GPU):
#      $REPRO_GROUPS, default "baselines tuning adaptive" (the grids the CPU has not finished; "paper sweep" adds the
#      paper table and the K = mn/10, mn/20 sweep), then the reports from whatever finished (--report-only);
#   5. FSDP (configs/fsdp.yaml) on every GPU of the machine: 20 debug-size steps of the llama60m configs
#      (dense, dct4x, lowrank) on a text made here (CUDA only; on the CPU the add-on must stop in one line).
#
# Usage:   benchmarks/gpu_checks.sh OUT_DIR [SECONDS]        (SECONDS: the whole script's budget, default 570)
#          PHASES="5" benchmarks/gpu_checks.sh OUT_DIR 300   the FSDP check alone (phase 4 takes all time left);
#          PHASES="4" benchmarks/gpu_checks.sh OUT_DIR 180   resumes the reproduction alone: finished runs are kept,
#          runs stopped at the time cap go on from the last.ckpt they saved on SIGTERM.
# Results: OUT_DIR/{env.txt, throughput_{eager,batched,fast}.md, logs.tgz (each phase's log, the test and the
#          reproduction logs), results.tgz (results_gpu/: runs.csv, summary.md, summary.png and each run's
#          metrics, config and log)}
# A CPU smoke test of the script itself:  DEVICE=cpu STEPS=4 DEBUG_SIZE=n_layer=1,n_embd=32,n_head=2,block=16,batch=8 \
#          benchmarks/gpu_checks.sh /tmp/gpu_checks 300
set -u
out=${1:?usage: benchmarks/gpu_checks.sh OUT_DIR [SECONDS]}
budget=${2:-570}
device=${DEVICE:-cuda}
steps=${STEPS:-5000}
jobs=${JOBS:-10}
debug=${DEBUG_SIZE:-}
phases=${PHASES:-1 2 3 4 5}
read -r -a groups <<<"${REPRO_GROUPS:-baselines tuning adaptive}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
start=$SECONDS
left() { echo $((budget - (SECONDS - start))); }
cap() { local want=$1 rest; rest=$(($(left) - 30)); echo $((want < rest ? want : (rest > 1 ? rest : 1))); }
stamp() { echo "[$((SECONDS - start)) s] $*" | tee -a "$out/env.txt"; }

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  python3 -c 'import sys, torch, lightning, jsonargparse; print(sys.version.split()[0], "torch", torch.__version__,
"lightning", lightning.__version__, "jsonargparse", jsonargparse.__version__, "cuda", torch.cuda.is_available())'
  nproc
} >"$out/env.txt" 2>&1

if [ "$device" = cuda ]; then
  bench=(--device cuda --precision bf16-mixed --warmup 30 --steps 300 --eval-warmup 5 --eval-steps 100)
  fast=(--compile --compile-mode reduce-overhead --no-check-finite --warmup 60 --steps 1000)
else
  bench=(--device cpu --threads 2 --warmup 2 --steps 3 --eval-warmup 1 --eval-steps 2)
  fast=(--no-check-finite)
fi

has() { [[ " $phases " == *" $1 "* ]]; }

if has 1; then
  stamp "phase 1: eager throughput"
  timeout "$(cap 140)" python3 benchmarks/throughput.py "${bench[@]}" \
    >"$out/throughput_eager.md" 2>"$out/throughput_eager.log"
  stamp "phase 1 exit $?"
fi

if has 1; then
  stamp "phase 1b: eager throughput, batch_reconstruction"
  timeout "$(cap 90)" python3 benchmarks/throughput.py "${bench[@]}" --batch-reconstruction \
    --configs dense dct2x dct4x dct_random2x lowrank16 >"$out/throughput_batched.md" 2>"$out/throughput_batched.log"
  stamp "phase 1b exit $?"
fi

if has 2; then
  stamp "phase 2: fast-mode throughput"
  timeout "$(cap 200)" python3 benchmarks/throughput.py "${bench[@]}" "${fast[@]}" \
    --configs dense dct4x dct2x bare_pytorch_dense >"$out/throughput_fast.md" 2>"$out/throughput_fast.log"
  stamp "phase 2 exit $?"
fi

tests=
if has 3; then
  stamp "phase 3 (background): GPU tests"
  (TORCHINDUCTOR_COMPILE_THREADS=2 timeout "$(cap 400)" python3 -m pytest -q -p no:cacheprovider \
    tests/test_precision.py tests/test_compile.py -k "cuda or compile" >"$out/gpu_tests.log" 2>&1
  echo "exit $?" >>"$out/gpu_tests.log") &
  tests=$!
fi

if has 4; then
  stamp "phase 4: reproduction"
  repro=(--steps "$steps" --seeds 0 1 --groups "${groups[@]}" --compressions 10 20 --out results_gpu
    --device "${device/cuda/gpu}")
  [ -n "$debug" ] && repro+=(--debug-size "$debug")
  timeout "$(cap 10000)" python3 benchmarks/reproduce.py "${repro[@]}" --jobs "$jobs" >>"$out/reproduce.log" 2>&1
  stamp "phase 4 exit $?"
  # Runs stopped by the cap save last.ckpt on SIGTERM; give them a few seconds before the files are packed.
  for _ in $(seq 20); do pgrep -f "cli.py fit" >/dev/null || break; sleep 1; done
  python3 benchmarks/reproduce.py "${repro[@]}" --report-only >>"$out/reproduce.log" 2>&1
  tar czf "$out/results.tgz" --exclude '*.ckpt' --exclude 'events.out.tfevents.*' results_gpu 2>>"$out/env.txt"
fi
if has 5 && [ "$device" = cuda ]; then
  stamp "phase 5: FSDP, one short run per parameterization"
  # 400 paragraphs: the token data module splits a single file into documents at blank lines.
  python3 -c "print('\\n\\n'.join(['the cat sat on the mat. ' * 50] * 400))" >"$out/fsdp_text.txt"
  for name in dense dct4x lowrank; do
    timeout "$(cap 120)" python3 cli.py fit --config "configs/llama60m/$name.yaml" --config configs/fsdp.yaml \
      --trainer.devices -1 --trainer.max_steps 20 --data.batches_per_epoch 10 --trainer.limit_val_batches 2 \
      --data.path "$out/fsdp_text.txt" --data.out "$out/fsdp_data" --trainer.default_root_dir "$out/fsdp_runs" \
      >>"$out/fsdp.log" 2>&1
    stamp "phase 5 $name exit $?"
  done
  rm -rf "$out/fsdp_runs" "$out/fsdp_data" "$out/fsdp_text.txt"
fi
[ -n "$tests" ] && wait "$tests"
stamp "done"
# Few files travel best: the logs go into one archive.
(cd "$out" && tar czf logs.tgz ./*.log && rm -f ./*.log)
