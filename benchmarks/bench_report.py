"""Writes a latency run as JSON, a Markdown report and a PNG plot.

Every duration in the Markdown is printed in the unit that shows it (µs, ms or s:
:func:`bench_common.format_duration`); the JSON keeps milliseconds at full precision.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench_common import (decode_nms_profile_text, emulated_work_text, format_duration,
                          timeline_text)
from bench_parity import comparison_failure, examples_section
from bench_targets import format_value

#: Stage columns of the end-to-end table, in pipeline order ("other" = total - stages).
STAGES = ("preprocess", "network", "h2d", "d2h", "decode", "nms", "other")
STAGE_TITLES = {"preprocess": "pyramid resize", "network": "network", "h2d": "h2d copy",
                "d2h": "d2h copy", "decode": "decode", "nms": "NMS", "other": "other"}


def write_json(result: dict[str, Any], path: Path) -> None:
    from tinyfaces_trt.core.files import write_text_atomic

    write_text_atomic(path, json.dumps(result, indent=1) + "\n")


def _t(stat: dict[str, Any] | None, p90: bool = False) -> str:
    """A summarized duration: median (and p90) in adaptive units; "-" when absent."""
    if not stat:
        return "-"
    if p90:
        return f"{format_duration(stat['median_ms'])} / {format_duration(stat['p90_ms'])}"
    return format_duration(stat["median_ms"])


def _size_name(size: dict[str, Any]) -> str:
    return f"{size['image_size'][0]}x{size['image_size'][1]}"


def _machine_lines(m: dict[str, Any]) -> list[str]:
    gpu = m.get("gpu")
    gpu_text = ", ".join(f"{k} {v}" for k, v in gpu.items()) if gpu else "none"
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    return [
        f"- CPU: {m['cpu_model']} ({m['logical_cores']} logical cores, {m['usable_cores']} "
        f"usable, {m['threads_used']} threads used), {m['memory_gib']} GiB RAM, "
        f"{m['os']} {m['arch']}",
        f"- GPU: {gpu_text}",
        f"- Versions: {versions}",
    ]


def _settings_lines(s: dict[str, Any]) -> list[str]:
    sizes = ", ".join(f"{w}x{h}" for w, h in s["image_sizes"])
    lines = [
        f"- Image sizes (W x H, in run order): {sizes}",
        f"- Network: ResNet-{s['depth']} Tiny Faces, {s['weights']}, variant {s['variant']}",
        f"- Pyramid: {s['pyramid']} rule, the same levels for every backend (listed per size)",
        f"- Thresholds: prob {s['prob_thresh']}, NMS IoU {s['nms_thresh']}",
        f"- Method: {s['warmup']} warm-up run(s), then {s['repeat']} timed runs; median and "
        "p90 (numpy linear interpolation); time.perf_counter; device work synchronised at "
        "every stage boundary; backends interleaved round by round",
        "- Shared-machine control: " + (
            f"a timed run waits until other processes use <= {s['max_contention']:.0%} of the "
            f"CPUs and is redone (up to {s['retries']} times) if they used more meanwhile"
            if s.get("max_contention") is not None else "off (other processes' CPU share is "
            "only recorded)"),
    ]
    if "torch_mode" in s:
        lines.append(f"- torch-cuda backends: torch mode {s['torch_mode']}")
    if s.get("budget_s"):
        lines.append(f"- Time budget: {s['budget_s']:g} s (work that did not fit is listed "
                     "as skipped)")
    return lines


def _backend_table(backends: list[dict[str, Any]]) -> list[str]:
    head = ("| backend | total median / p90 | end to end (no stage sync) | "
            + " | ".join(STAGE_TITLES[s] for s in STAGES)
            + " | detections | candidates | speed-up vs reference | other processes' CPU share |")
    lines = [head, "|" + "---|" * (len(STAGES) + 7)]
    for b in backends:
        if b["status"] != "ok":
            continue
        st = b["stages"]
        speed = f"{b['speedup_vs_reference']:.2f}x" if b.get("speedup_vs_reference") else "-"
        e2e = b.get("end_to_end")
        cells = [f"`{b['name']}`", _t(st["total"], p90=True), _t(e2e) if e2e else "-"]
        cells += [_t(st.get(s)) for s in STAGES]
        cands = (b.get("device_stats") or {}).get("num_candidates")
        cells += [str(b["detections"]), "-" if cands is None else str(cands), speed,
                  _contention(b.get("contention"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _contention(c: dict[str, Any] | None) -> str:
    if not c or c.get("others_cpu_share_median") is None:
        return "-"
    text = f"{c['others_cpu_share_median']:.0%}"
    return text + (f" ({c['discarded_runs']} runs redone)" if c.get("discarded_runs") else "")


def _level_table(backends: list[dict[str, Any]], levels: list[dict[str, Any]]) -> list[str]:
    names = [f"L{lv['index']} {lv['width']}x{lv['height']}" for lv in levels]
    lines = ["| backend | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    if all(lv.get("flop") for lv in levels):
        lines.append("| GFLOP | " + " | ".join(f"{lv['flop'] / 1e9:.1f}" for lv in levels) + " |")
    for b in backends:
        if b["status"] != "ok":
            continue
        cells = [_t(b["stages"].get(f"network[L{lv['index']}]")) for lv in levels]
        lines.append(f"| `{b['name']}` | " + " | ".join(cells) + " |")
    return lines


def _vs_numpy(c: dict[str, Any] | None) -> str:
    """A CUDA row's detections against the numpy path's, for its "kept" cell."""
    if c is None:
        return ""
    if c["passed"]:
        return f", numpy's ({c['matched']} matched, probability within {c['max_score_diff']:.1g})"
    return f", **NOT numpy's**: {comparison_failure(c)}"


def _decode_nms_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| candidates (faces) | implementation | decode median / p90 | "
             "NMS median / p90 | decode + NMS | without a wait between | d2h | kept |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for impl in r["implementations"]:
            first = f"{r['candidates']} ({r['faces']})"
            if impl["status"] != "ok":
                lines.append(f"| {first} | {impl['name']} | {impl['status']}: {impl['reason']} "
                             "| | | | | |")
                continue
            both = format_duration(impl["decode"]["median_ms"] + impl["nms"]["median_ms"])
            lines.append(f"| {first} | {impl['name']} | {_t(impl['decode'], True)} | "
                         f"{_t(impl['nms'], True)} | {both} | {_t(impl.get('together'), True)} | "
                         f"{_t(impl.get('d2h'))} | "
                         f"{impl['kept']}{_vs_numpy(impl.get('vs_numpy'))} |")
    work = [f"{r['candidates']}: {emulated_work_text(r['emulated'])}" for r in rows
            if r.get("emulated")]
    if work:
        lines += ["", "What the CUDA NMS does there, from its numpy emulation "
                  "(kernels/nms_emulation.py): " + "; ".join(work) + "."]
    return lines


def _decode_nms_profile_lines(profile: list[dict[str, Any]]) -> list[str]:
    lines = ["### Where decode + NMS spend their time", "",
             "One synchronised reset + decode + NMS of the runtime's default NMS rule per count, "
             "under the torch profiler (it slows the host: read the GPU times, and the wall "
             "time as an upper bound).", ""]
    for entry in profile:
        if entry.get("status") != "ok":
            lines.append(f"- {entry['target']} candidates: {entry.get('status')}: "
                         f"{entry.get('reason', '')}")
            continue
        lines += [f"{entry['candidates']} candidates ({entry['name']}): "
                  f"{decode_nms_profile_text(entry)}.", "",
                  "| kernel | calls | GPU time | share |", "|---|---|---|---|"]
        lines += [f"| `{k['name']}` | {k['calls']} | {format_duration(k['gpu_ms'])} | "
                  f"{k['share']:.0%} |" for k in entry["kernels"]]
        lines.append("")
    return lines


def _upload_lines(upload: dict[str, Any] | None) -> list[str]:
    """The image upload micro-benchmark's section (bench_upload.py); nothing where it was
    skipped (no GPU: the JSON says so)."""
    if not upload or upload.get("status") == "skipped":
        return []
    lines = ["## Image upload: staging copy and host-to-device transfer", ""]
    if upload["status"] != "ok":
        return lines + [f"{upload['status']}: {upload.get('reason', '')}", ""]
    lines += [f"The CUDA preprocessor's first step per image, each way the runtime can take it "
              f"(runtime/backends/staging.py), interleaved round by round: {upload['warmup']} "
              f"warm-up, {upload['rounds']} timed rounds. `copy`: into page-locked memory "
              f"alone; `copy + upload`: with each chunk's transfer queued as it is copied, "
              f"until the stream has finished it (the GPU waits for this before the first "
              f"resize); the page-locked way copies nothing (the image's producer filled "
              f"`Detector.image_buffer`).", "",
              "| image | way | chunks | copy median / p90 | copy + upload median / p90 |",
              "|---|---|---|---|---|"]
    for row in upload["rows"]:
        width, height = row["image_size"]
        for way in row["ways"]:
            lines.append(f"| {width}x{height} ({row['bytes'] / 1e6:.1f} MB) | {way['name']} | "
                         f"{way['chunks']} | {_t(way['copy'], True)} | "
                         f"{_t(way['copy_upload'], True)} |")
    return lines + [""]


def _batch_lines(batch: dict[str, Any]) -> list[str]:
    n = batch["batch"]
    if not batch["rows"]:
        return [f"No backend that ran here takes batches (`detect_batch` of {n} frames in one "
                f"network call per level): nothing measured."]
    lines = [f"{n} different frames of this size: one `detect` per frame vs one "
             f"`detect_batch` of all {n}; time per image (median / p90), images per second "
             "and the gain of the batch; `network calls` = runner calls during one "
             "`detect_batch` (levels x frames when it does not batch).", "",
             "| backend | single: per image | batch: per image | single images/s | "
             "batch images/s | gain | network calls |", "|---|---|---|---|---|---|---|"]
    for r in batch["rows"]:
        if r.get("status") != "ok":
            lines.append(f"| `{r['backend']}` | {r.get('status')}: {r.get('reason')} | | | | | |")
            continue
        lines.append(f"| `{r['backend']}` | {_t(r['single'], True)} | {_t(r['batched'], True)} | "
                     f"{r['single_images_per_s']:.1f} | {r['batched_images_per_s']:.1f} | "
                     f"{r['gain']:.2f}x | {r['runner_calls']} |")
    modes = [f"`{r['backend']}` {r['shape_modes']}" for r in batch["rows"] if r.get("shape_modes")]
    if modes:
        lines += ["", f"The batch-of-{n} input shapes ran as (mode after any fallback): "
                  + "; ".join(modes) + "."]
    return lines


def _parity_lines(parity: dict[str, Any]) -> list[str]:
    lines = [f"Reference: {parity['reference']}."]
    if parity.get("status") != "ok":
        return lines + ["", f"{parity.get('status')}: {parity.get('reason')}"]
    lines[0] += (f" {parity['reference_detections']} detections "
                 f"({format_duration(parity['reference_seconds'] * 1e3)}).")
    lines += ["", "Detections matched one to one by IoU (parity package, tolerances of the "
              "backend's precision); `missing` / `extra`: firm detections (prob not within the "
              "margin of the threshold) without a match and not explained by an NMS tie; "
              "both must be 0.", "",
              "| backend | result | precision | detections (ref / test) | matched | min IoU | "
              "max prob diff | missing | extra | NMS ties | why |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in parity["rows"]:
        if "reference" not in r:
            lines.append(f"| `{r['backend']}` | **FAIL** | | | | | | | | | "
                         f"{'; '.join(r.get('failures', []))} |")
            continue
        result = "pass" if r["passed"] else "**FAIL**"
        tol = r["tolerance"]
        lines.append(
            f"| `{r['backend']}` | {result} | {r['precision']} (IoU >= {tol['iou']:g}, "
            f"dprob <= {tol['score']:g}) | {r['reference']} / {r['test']} | {r['matched']} | "
            f"{r['min_iou']:.4f} | {r['max_score_diff']:.2e} | {r['missing_firm']} | "
            f"{r['extra_firm']} | {r['nms_ambiguous']} | {'; '.join(r['failures'])} |")
    return lines + examples_section(parity["rows"], lambda r: f"`{r['backend']}`")


def _profile_lines(profile: dict[str, Any]) -> list[str]:
    if profile.get("status") != "ok":
        return [f"{profile.get('status')}: {profile.get('reason')}"]
    lines = [f"`{profile['backend']}`, one detect under the torch profiler: "
             f"{format_duration(profile['wall_ms'])} wall, "
             f"{format_duration(profile['gpu_kernel_ms'])} of GPU kernels (the profiler slows "
             "the host side; read shares, not absolute times)."
             + (f" {timeline_text(profile.get('timeline'))}." if profile.get("timeline") else ""),
             "",
             "| kernel | calls | GPU time | share |", "|---|---|---|---|"]
    if not profile["top"]:
        lines.append("| (the profiler recorded no GPU kernel) | | | |")
    for k in profile["top"]:
        lines.append(_kernel_row(k))
    stages = profile.get("stages")
    if stages:
        total = sum(k["gpu_ms"] for k in stages)
        lines += ["", f"The CUDA stages' kernels and copies (every one: resize, decode, NMS with "
                      f"its CUB sorts and scan): {format_duration(total)} in all.", "",
                  "| kernel | calls | GPU time | share |", "|---|---|---|---|"]
        lines += [_kernel_row(k) for k in stages]
    return lines


def _kernel_row(k: dict[str, Any]) -> str:
    name = k["name"].replace("|", "/")
    return f"| `{name}` | {k['calls']} | {format_duration(k['gpu_ms'])} | {k['share']:.0%} |"


def _targets_lines(targets: list[dict[str, Any]]) -> list[str]:
    lines = ["Benchmarks, not timed tests (H100/H200, 1080p, fp16, adaptive pyramid); "
             "bench_targets.py says how each is measured.", "",
             "| target | goal | measured | verdict | measured at | numbers | why (when missed) |",
             "|---|---|---|---|---|---|---|"]
    for t in targets:
        measured = "-" if t["measured"] is None else format_value(t["measured"], t["unit"])
        verdict = t["verdict"]
        if t["met"] is False:
            verdict = f"**{verdict}**"
        lines.append(f"| {t['title']} | {t['relation']} {format_value(t['goal'], t['unit'])} | "
                     f"{measured} | {verdict} | {t['where']} | {t['detail']} | {t['why']} |")
    return lines


def _backend_note(b: dict[str, Any]) -> str:
    note = f"- `{b['name']}`: {b['description']}"
    if b.get("copies_note"):
        note += f"; {b['copies_note']}"
    if b.get("build_s") is not None:
        note += f"; built in {format_duration(b['build_s'] * 1e3)}"
    if b.get("rounds_note"):
        note += f"; {b['rounds_note']}"
    if b.get("end_to_end_note"):
        note += f"; end to end {b['end_to_end_note']}"
    if b.get("end_to_end_page_locked"):
        note += (f"; from a page-locked image (`Detector.image_buffer`: no staging copy) "
                 f"{_t(b['end_to_end_page_locked'])} end to end (no stage sync)")
    if b.get("end_to_end_page_locked_note"):
        note += f"; from a page-locked image {b['end_to_end_page_locked_note']}"
    return note


def _size_lines(size: dict[str, Any]) -> list[str]:
    name = _size_name(size)
    lines = [f"## {name}", ""]
    if size.get("status", "ok") != "ok":
        return lines + [f"Skipped: {size['reason']}", ""]
    levels = ", ".join(f"L{lv['index']} {lv['width']}x{lv['height']} (2^{lv['exponent']:g})"
                       for lv in size["levels"])
    if size.get("partial"):
        lines += [f"**Partial: {size['partial']}** (the run stopped here, or was still "
                  "running when this was written).", ""]
    lines += [f"Image: {size['image']} {name}; pyramid: {levels}"]
    if size.get("flop_per_image"):
        flop = size["flop_per_image"]
        amount = f"{flop / 1e12:.2f} TFLOP" if flop >= 1e11 else f"{flop / 1e9:.2f} GFLOP"
        lines[-1] += f"; network {amount} per image (FlopCounterMode, 2 per multiply-add)"
    lines += ["", "### End-to-end latency per image", "",
              "Stage columns are medians over the timed runs (they need not add up to the "
              "total median); `other` is the total minus the timed stages. `end to end (no "
              "stage sync)`: GPU backends timed again without synchronising between stages. "
              "`candidates`: before NMS, from the device postprocessor. `speed-up vs "
              "reference` = reference total median / backend total median, both from this "
              "run.", ""]
    backends = size["backends"]
    if any(b["status"] == "ok" for b in backends):
        lines += _backend_table(backends)
        lines += [""] + [_backend_note(b) for b in backends if b["status"] == "ok"] + [""]
    else:
        lines += ["No backend ran at this size.", ""]
    absent = [b for b in backends if b["status"] != "ok"]
    if absent:
        lines += ["Not measured:", ""]
        lines += [f"- `{b['name']}`: {b['status']}: {b['reason']}" for b in absent]
        lines.append("")
    lines += ["### Network time per pyramid level (median)", ""]
    lines += _level_table(backends, size["levels"]) + [""]
    if size.get("batch"):
        lines += ["### Batch throughput", ""] + _batch_lines(size["batch"]) + [""]
    if size.get("parity"):
        lines += ["### Parity with the CPU reference", ""] + _parity_lines(size["parity"]) + [""]
    if size.get("profile"):
        lines += ["### Profile", ""] + _profile_lines(size["profile"]) + [""]
    return lines


def render_markdown(result: dict[str, Any]) -> str:
    """The human-readable report of one run."""
    lines = [f"# Tiny Faces latency: {result['name']}", "",
             f"Run {result['created']} with:", "", f"    {result['command']}", ""]
    if result.get("complete") is False:
        lines += ["**Incomplete: the run stopped before its end; these are the numbers it had "
                  "by then.**", ""]
    if result.get("targets"):
        lines += ["## Targets", ""] + _targets_lines(result["targets"]) + [""]
    lines += ["## Machine", ""] + _machine_lines(result["machine"])
    lines += ["", "## Settings", ""] + _settings_lines(result["settings"]) + [""]
    for size in result["sizes"]:
        lines += _size_lines(size)
    dn = result.get("decode_nms")
    if dn:
        d = dn["rows"][0]
        lines += ["## Decode + NMS on synthetic clustered score maps", "",
                  f"One level, score map {d['map'][0]}x{d['map'][1]} at scale {d['scale']:g} "
                  "(the 2x level of a 1920x1080 image), faces synthesized as clusters of "
                  "neighbouring cells/templates above threshold (see benchmarks/README.md). "
                  f"{dn['warmup']} warm-up, {dn['repeat']} timed runs. The CUDA rows run the "
                  "runtime's CudaPostprocessor (its NMS includes downloading the kept boxes); "
                  "their kept cell says whether they kept the numpy path's detections "
                  "(IoU-matched, fp32 tolerances).",
                  ""]
        lines += _decode_nms_table(dn["rows"]) + [""]
        if dn.get("profile"):
            lines += _decode_nms_profile_lines(dn["profile"]) + [""]
    lines += _upload_lines(result.get("upload"))
    if result.get("plot"):
        lines += [f"![latency by backend and stage]({result['plot']})"]
    elif result.get("plot_skipped"):
        lines += [f"Plot skipped: {result['plot_skipped']}"]
    return "\n".join(lines).rstrip() + "\n"


def write_plot(result: dict[str, Any], path: Path) -> str | None:
    """Writes the PNG; returns None, or the reason it was skipped (matplotlib missing).

    Panels: per image size, latency per backend stacked by stage (total labelled); decode +
    NMS against candidates (log-log); batch throughput.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'tinyfaces-trt[plot]')"
    from tinyfaces_trt.core.files import atomic_output

    sizes = [s for s in result["sizes"] if s.get("status", "ok") == "ok"
             and any(b["status"] == "ok" for b in s["backends"])]  # no empty panel
    dn = result.get("decode_nms")
    batch = next((s["batch"] for s in sizes if s.get("batch", {}).get("rows")), None)
    panels = [("size", s) for s in sizes] + ([("dn", dn)] if dn else []) + \
        ([("batch", batch)] if batch else [])
    if not panels:
        return "nothing was measured"
    ncols = min(2, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    n_backends = max([len([b for b in s["backends"] if b["status"] == "ok"]) for s in sizes] + [3])
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.5 * ncols, (2.4 + 0.5 * n_backends) * nrows),
                             squeeze=False)
    for ax, (kind, data) in zip(axes.flat, panels):
        {"size": _plot_size, "dn": _plot_decode_nms, "batch": _plot_batch}[kind](ax, data, result)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return None


def _plot_size(ax: Any, size: dict[str, Any], result: dict[str, Any]) -> None:
    ok = [b for b in size["backends"] if b["status"] == "ok"]
    names = [b["name"] for b in ok]
    left = [0.0] * len(ok)
    for stage in STAGES:
        vals = [b["stages"].get(stage, {}).get("median_ms", 0.0) for b in ok]
        if any(v > 0 for v in vals):
            ax.barh(names, vals, left=left, label=STAGE_TITLES[stage])
            left = [a + v for a, v in zip(left, vals)]
    for i, b in enumerate(ok):
        ax.text(left[i], i, " " + format_duration(b["stages"]["total"]["median_ms"]),
                va="center", fontsize=8)
    ax.set_xlim(0, max(left + [1e-3]) * 1.25)
    ax.invert_yaxis()
    ax.set_xlabel("median latency per image (ms; stages synchronised)")
    ax.set_title(f"{_size_name(size)}, ResNet-{result['settings']['depth']}, "
                 f"{len(size['levels'])} pyramid levels")
    ax.legend(fontsize=7, loc="lower right")


def _plot_decode_nms(ax: Any, dn: dict[str, Any], result: dict[str, Any]) -> None:
    names = [i["name"] for i in dn["rows"][0]["implementations"]]
    for k, name in enumerate(names):
        xs, total, nms = [], [], []
        for row in dn["rows"]:
            impl = next((i for i in row["implementations"] if i["name"] == name), None)
            if impl and impl["status"] == "ok":
                xs.append(row["candidates"])
                total.append(impl["decode"]["median_ms"] + impl["nms"]["median_ms"])
                nms.append(impl["nms"]["median_ms"])
        if xs:
            color = f"C{k}"
            ax.plot(xs, total, "o-", color=color, label=f"{name}: decode + NMS")
            ax.plot(xs, nms, "s--", color=color, label=f"{name}: NMS alone")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("candidates")
    ax.set_ylabel("median ms")
    ax.set_title("decode + NMS, synthetic clustered score maps")
    ax.legend(fontsize=7)


def _plot_batch(ax: Any, batch: dict[str, Any], result: dict[str, Any]) -> None:
    rows = [r for r in batch["rows"] if r.get("status") == "ok"]
    names = [r["backend"] for r in rows]
    ys = range(len(rows))
    ax.barh([y - 0.2 for y in ys], [r["single_images_per_s"] for r in rows], height=0.4,
            label="one detect per frame")
    ax.barh([y + 0.2 for y in ys], [r["batched_images_per_s"] for r in rows], height=0.4,
            label=f"detect_batch of {batch['batch']}")
    ax.set_yticks(list(ys))
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlabel("images per second")
    ax.set_title("batch throughput")
    ax.legend(fontsize=7)
