"""core.memory.available_bytes on trees shaped as Linux's /proc and /sys/fs/cgroup: the least
of MemAvailable and what the control group (v1 or v2) has left under its limit."""

from __future__ import annotations

from pathlib import Path

from tinyfaces_trt.core.memory import available_bytes

GIB = 2**30


def _proc(tmp_path: Path, cgroup: str, available_kib: int | None = 8 * 2**20) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    meminfo = "MemTotal:       16000000 kB\n"
    if available_kib is not None:
        meminfo += f"MemAvailable:   {available_kib} kB\n"
    (proc / "meminfo").write_text(meminfo + "Buffers:          1000 kB\n")
    (proc / "self" / "cgroup").write_text(cgroup)
    return proc


def _group(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text + "\n")


def test_mem_available_where_no_group_limits_memory(tmp_path):
    proc = _proc(tmp_path, "0::/\n")
    root = tmp_path / "cgroup"
    _group(root, memory_max="max", memory_current="123")
    assert available_bytes(root, proc) == 8 * GIB
    proc_v1 = _proc(tmp_path / "v1", "4:memory:/\n1:cpu:/\n")
    _group(root / "memory", memory_limit_in_bytes="9223372036854771712",
           memory_usage_in_bytes=str(GIB))
    assert available_bytes(root, proc_v1) == 8 * GIB


def test_a_v2_group_limit_lowers_it(tmp_path):
    proc = _proc(tmp_path, "0::/job/42\n")
    root = tmp_path / "cgroup"
    _group(root / "job" / "42", memory_max=str(3 * GIB), memory_current=str(GIB))
    assert available_bytes(root, proc) == 2 * GIB
    _group(root / "job" / "42", memory_max=str(GIB), memory_current=str(2 * GIB))
    assert available_bytes(root, proc) == 0  # over its limit: nothing left


def test_a_v1_group_limit_lowers_it_also_seen_from_inside_a_container(tmp_path):
    proc = _proc(tmp_path, "9:name=systemd:/\n4:memory:/docker/abc\n0::/\n")
    root = tmp_path / "cgroup"
    # inside the container the group's own files sit at the mount's root
    _group(root / "memory", memory_limit_in_bytes=str(4 * GIB),
           memory_usage_in_bytes=str(GIB // 2))
    assert available_bytes(root, proc) == 4 * GIB - GIB // 2
    _group(root / "memory" / "docker" / "abc", memory_limit_in_bytes=str(2 * GIB),
           memory_usage_in_bytes=str(GIB))
    assert available_bytes(root, proc) == GIB  # the group's own path first


def test_a_group_left_with_more_than_the_machine_has_gives_the_machine(tmp_path):
    proc = _proc(tmp_path, "0::/\n", available_kib=2**20)
    root = tmp_path / "cgroup"
    _group(root, memory_max=str(64 * GIB), memory_current="0")
    assert available_bytes(root, proc) == GIB


def test_unreadable_files_fall_back_to_free_pages(tmp_path):
    proc = tmp_path / "nothing"
    free = available_bytes(tmp_path / "none", proc)
    assert free is not None and free > 0  # os.sysconf's free physical pages here


def test_a_limit_on_a_group_above_counts_too(tmp_path):
    """A Slurm job's limit sits on job_7; the task's own group, below it, says "max"."""
    proc = _proc(tmp_path, "0::/system.slice/slurmstepd.scope/job_7/step_0/user/task_0\n",
                 available_kib=200 * 2**20)
    root = tmp_path / "cgroup"
    job = root / "system.slice" / "slurmstepd.scope" / "job_7"
    _group(job, memory_max=str(16 * GIB), memory_current=str(15 * GIB))
    _group(job / "step_0" / "user" / "task_0", memory_max="max", memory_current=str(GIB))
    assert available_bytes(root, proc) == GIB
    _group(job / "step_0", memory_max=str(GIB // 2), memory_current="0")  # the tighter one
    assert available_bytes(root, proc) == GIB // 2


def test_inactive_page_cache_is_room(tmp_path):
    """Video read and written fills the group's page cache, which its usage counts: the room
    is the limit less the working set (usage less inactive file pages), as the kernel reclaims
    those before it kills."""
    proc = _proc(tmp_path, "0::/job\n", available_kib=200 * 2**20)
    root = tmp_path / "cgroup"
    _group(root / "job", memory_max=str(16 * GIB), memory_current=str(15 * GIB),
           memory_stat=f"anon {GIB}\nfile {14 * GIB}\ninactive_file {12 * GIB}\nactive_file 0")
    assert available_bytes(root, proc) == 13 * GIB
    proc_v1 = _proc(tmp_path / "v1", "4:memory:/job\n", available_kib=200 * 2**20)
    _group(root / "memory" / "job", memory_limit_in_bytes=str(4 * GIB),
           memory_usage_in_bytes=str(4 * GIB),
           memory_stat=f"cache {3 * GIB}\ninactive_file {GIB}\ntotal_inactive_file {2 * GIB}")
    assert available_bytes(root, proc_v1) == 2 * GIB  # the hierarchy's total counter
