"""AOTInductor load probe: python3 aoti_min.py MODE DIR
plain: compile a tiny conv net into DIR/min.pt2, load (default flags), run
L<rst><idx>: load DIR/min.pt2 with run_single_threaded=<rst> (1/0), device_index=<idx> (0/-1)
ours: TorchCudaRunner(mode="aoti") on the test's stand-in, packages in DIR; load: again (2nd process)"""
import faulthandler, sys, os, time
faulthandler.enable()
sys.path.insert(0, os.getcwd())
import torch
from torch import nn
mode, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
t0 = time.time()
def log(*a):
    print(f"[{mode} {time.time()-t0:6.1f}s]", *a, flush=True)
log("torch", torch.__version__, torch.cuda.get_device_name(0))
torch.manual_seed(0)
m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).cuda().eval()
x = torch.randn(1, 3, 32, 48, device="cuda")
path = os.path.join(out, "min.pt2")
if mode == "plain":
    prog = torch.export.export(m, (x,), strict=False)
    torch._inductor.aoti_compile_and_package(prog, package_path=path)
    log("compiled", os.path.getsize(path))
    fn = torch._inductor.aoti_load_package(path)
elif mode.startswith("L"):
    rst, idx = mode[1] == "1", int(mode[2:])
    fn = torch._inductor.aoti_load_package(path, run_single_threaded=rst, device_index=idx)
if mode == "plain" or mode.startswith("L"):
    log("loaded")
    with torch.no_grad():
        y = fn(x)
        torch.cuda.synchronize()
        log("ran, max diff", (y - m(x)).abs().max().item())
elif mode in ("ours", "load"):
    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
    from test_torch_cuda_gpu import stand_in, net_input
    from tinyfaces_trt.export.torch_cuda import TorchCudaRunner
    model, x = stand_in(), net_input((1, 3, 64, 96))
    with TorchCudaRunner(model, mode="aoti", cache_dir=out) as r:
        y = r.run(x)
        rec = r.records[x.shape]
        log("ran", rec.mode, "cache_loaded", rec.cache_loaded, float(abs(y).max()))
log("done")
