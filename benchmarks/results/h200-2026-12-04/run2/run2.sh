export PYTHONUNBUFFERED=1; start=$SECONDS
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
python3 tools/gpu_check.py --out $OUT/gc --budget-s 300 --skip sanitizers --image-sizes 1920x1080 --batch 0 2>&1 | grep -v "^    |" 
echo "gpu_check done at $((SECONDS-start)) s"
{ echo "==== nms_dense"; timeout 75 python3 .diag/nms_dense.py 2>&1 | tail -20; } >> $OUT/diag.log
left=$((425 - (SECONDS-start))); echo "probe gets $left s"
[ $left -gt 20 ] && timeout $left bash .diag/aoti_probe.sh >> $OUT/diag.log 2>&1
echo "all done at $((SECONDS-start)) s"; cat $OUT/diag.log | cut -c1-300 | tail -150
