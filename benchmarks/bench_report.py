"""Writes a latency run as JSON, a Markdown table and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Stage columns of the end-to-end table, in pipeline order ("other" = total - stages).
STAGES = ("preprocess", "network", "h2d", "d2h", "decode", "nms", "other")
STAGE_TITLES = {"preprocess": "pyramid resize", "network": "network", "h2d": "h2d copy",
                "d2h": "d2h copy", "decode": "decode", "nms": "NMS", "other": "other"}


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=1) + "\n")


def _ms(stat: dict[str, Any] | None, p90: bool = False) -> str:
    if not stat:
        return "-"
    if p90:
        return f"{stat['median_ms']:.1f} / {stat['p90_ms']:.1f}"
    return f"{stat['median_ms']:.1f}"


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
    levels = ", ".join(f"L{lv['index']} {lv['width']}x{lv['height']} (2^{lv['exponent']:g})"
                       for lv in s["levels"])
    return [
        f"- Image: {s['image']} {s['image_size'][0]}x{s['image_size'][1]} (W x H)",
        f"- Network: ResNet-{s['depth']} Tiny Faces, {s['weights']}, variant {s['variant']}",
        f"- Pyramid ({s['pyramid']} rule, the same levels for every backend): {levels}",
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


def _backend_table(backends: list[dict[str, Any]]) -> list[str]:
    head = ("| backend | total median / p90 (ms) | "
            + " | ".join(STAGE_TITLES[s] for s in STAGES)
            + " | detections | speed-up vs reference | other processes' CPU share |")
    lines = [head, "|" + "---|" * (len(STAGES) + 5)]
    for b in backends:
        if b["status"] != "ok":
            continue
        st = b["stages"]
        speed = f"{b['speedup_vs_reference']:.2f}x" if b.get("speedup_vs_reference") else "-"
        cells = [f"`{b['name']}`", _ms(st["total"], p90=True)]
        cells += [_ms(st.get(s)) for s in STAGES]
        cells += [str(b["detections"]), speed, _contention(b.get("contention"))]
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
    for b in backends:
        if b["status"] != "ok":
            continue
        cells = [_ms(b["stages"].get(f"network[L{lv['index']}]")) for lv in levels]
        lines.append(f"| `{b['name']}` | " + " | ".join(cells) + " |")
    return lines


def _decode_nms_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| candidates (faces) | implementation | decode median / p90 (ms) | "
             "NMS median / p90 (ms) | d2h (ms) | kept |", "|---|---|---|---|---|---|"]
    for r in rows:
        for impl in r["implementations"]:
            first = f"{r['candidates']} ({r['faces']})"
            if impl["status"] != "ok":
                lines.append(f"| {first} | {impl['name']} | skipped: {impl['reason']} | | | |")
                continue
            lines.append(f"| {first} | {impl['name']} | {_ms(impl['decode'], True)} | "
                         f"{_ms(impl['nms'], True)} | {_ms(impl.get('d2h'))} | {impl['kept']} |")
    return lines


def _backend_note(b: dict[str, Any]) -> str:
    note = f"- `{b['name']}`: {b['description']}"
    if b.get("copies_note"):
        note += f"; {b['copies_note']}"
    if b.get("end_to_end"):
        note += f"; end-to-end without per-stage sync: {_ms(b['end_to_end'], True)} ms"
    return note


def render_markdown(result: dict[str, Any]) -> str:
    """The human-readable report of one run."""
    backends = result["backends"]
    lines = [f"# Tiny Faces latency: {result['name']}", "",
             f"Run {result['created']} with:", "", f"    {result['command']}", "",
             "## Machine", ""]
    lines += _machine_lines(result["machine"])
    lines += ["", "## Settings", ""]
    lines += _settings_lines(result["settings"])
    lines += ["", "## End-to-end latency per image", "",
              "Stage columns are medians in ms over the timed runs (they need not add up to "
              "the total median); `other` is the total minus the timed stages. "
              "`speed-up vs reference` = reference total median / backend total median, "
              "both from this run. `other processes' CPU share`: median share of the machine's "
              "CPU time used by other processes during the timed runs.", ""]
    lines += _backend_table(backends)
    lines += [""] + [_backend_note(b) for b in backends if b["status"] == "ok"] + [""]
    skipped = [b for b in backends if b["status"] != "ok"]
    if skipped:
        lines += ["Not measured:", ""]
        lines += [f"- `{b['name']}`: {b['status']}: {b['reason']}" for b in skipped]
        lines.append("")
    lines += ["## Network time per pyramid level (median ms)", ""]
    lines += _level_table(backends, result["settings"]["levels"])
    dn = result.get("decode_nms")
    if dn:
        d = dn["rows"][0]
        lines += ["", "## Decode + NMS on synthetic clustered score maps", "",
                  f"One level, score map {d['map'][0]}x{d['map'][1]} at scale {d['scale']:g} "
                  "(the 2x level of a 1920x1080 image), faces synthesized as clusters of "
                  "neighbouring cells/templates above threshold (see benchmarks/README.md). "
                  f"{dn['warmup']} warm-up, {dn['repeat']} timed runs.", ""]
        lines += _decode_nms_table(dn["rows"])
    if result.get("plot"):
        lines += ["", f"![latency by backend and stage]({result['plot']})"]
    elif result.get("plot_skipped"):
        lines += ["", f"Plot skipped: {result['plot_skipped']}"]
    return "\n".join(lines) + "\n"


def write_plot(result: dict[str, Any], path: Path) -> str | None:
    """Writes the PNG; returns None, or the reason it was skipped (matplotlib missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'tinyfaces-trt[plot]')"
    ok = [b for b in result["backends"] if b["status"] == "ok"]
    dn = result.get("decode_nms")
    ncols = 2 if dn else 1
    fig, axes = plt.subplots(1, ncols, figsize=(7 * ncols, 2.2 + 0.55 * max(len(ok), 3)),
                             squeeze=False)
    ax = axes[0, 0]
    names = [b["name"] for b in ok]
    left = [0.0] * len(ok)
    for stage in STAGES:
        vals = [b["stages"].get(stage, {}).get("median_ms", 0.0) for b in ok]
        if any(v > 0 for v in vals):
            ax.barh(names, vals, left=left, label=STAGE_TITLES[stage])
            left = [a + v for a, v in zip(left, vals)]
    ax.invert_yaxis()
    ax.set_xlabel("median latency per image (ms)")
    w, h = result["settings"]["image_size"]
    ax.set_title(f"{w}x{h}, ResNet-{result['settings']['depth']}, "
                 f"{len(result['settings']['levels'])} pyramid levels")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4)
    if dn:
        ax2 = axes[0, 1]
        for k, name in enumerate(i["name"] for i in dn["rows"][0]["implementations"]):
            xs, total, nms = [], [], []
            for row in dn["rows"]:
                impl = next(i for i in row["implementations"] if i["name"] == name)
                if impl["status"] == "ok":
                    xs.append(row["candidates"])
                    total.append(impl["decode"]["median_ms"] + impl["nms"]["median_ms"])
                    nms.append(impl["nms"]["median_ms"])
            if xs:
                color = f"C{k}"
                ax2.plot(xs, total, "o-", color=color, label=f"{name}: decode + NMS")
                ax2.plot(xs, nms, "s--", color=color, label=f"{name}: NMS alone")
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.set_xlabel("candidates")
        ax2.set_ylabel("median ms")
        ax2.set_title("decode + NMS, synthetic clustered score maps")
        ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
