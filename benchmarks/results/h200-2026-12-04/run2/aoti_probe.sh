# AOTInductor load probe; writes to stdout (the caller's diag.log)
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=$PWD CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
D=/tmp/aoti; mkdir -p $D; crashed=""
for m in plain L10 L1-1 L00 ours load; do
  dir=$D/min; case $m in ours|load) dir=$D/ours;; esac
  timeout 90 python3 .diag/aoti_min.py $m $dir > $D/$m.log 2>&1; rc=$?
  echo "==== $m rc=$rc"; grep -v "^  File\|^Thread\|^$" $D/$m.log | tail -25
  [ $rc -ne 0 ] && [ -z "$crashed" ] && crashed=$m
done
if [ -n "$crashed" ]; then
  dir=$D/min; case $crashed in ours) dir=$D/gdb_ours;; load) dir=$D/ours;; esac
  echo "==== cuda-gdb on $crashed"
  timeout 120 cuda-gdb -q -batch -ex "set pagination off" -ex run -ex bt \
    --args python3 .diag/aoti_min.py $crashed $dir 2>&1 | grep -v "^\[New Thread\|^\[Thread\|Detaching\|^warning: Unable" | tail -80
  echo "==== gdb rc=${PIPESTATUS[0]}"
fi
echo "==== the GPU test alone (no xdist)"
timeout 100 python3 -m pytest -q -p no:cacheprovider -p no:xdist tests/test_torch_cuda_gpu.py -k aoti_package 2>&1 | grep -v "^  File\|^Thread\|^$" | tail -30
echo "==== pytest rc=${PIPESTATUS[0]}"
