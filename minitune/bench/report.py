"""The bench's results as text: an aligned table for the terminal, the same tables in Markdown, and files."""

from __future__ import annotations

from pathlib import Path

from minitune.checkpoint import atomic_write_bytes, atomic_write_json
from minitune.memory import human_bytes

NOTES = [
    "N = all parameters except wpe (and a soft prompt); the tied wte counts once, as the lm_head matmul.",
    "N_tr = the trainable part of N. T = positions per sequence (a soft prompt's included); tokens/s counts "
    "input tokens.",
    "MFU = (FLOPs/token x positions/s) / the matmul reference above, measured in this run.",
]


def _table(headers: list[str], rows: list[list[str]], left: int = 2) -> list[str]:
    """Rows aligned under headers: the first `left` columns to the left, the rest to the right."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def _markdown(headers: list[str], rows: list[list[str]], left: int = 2) -> list[str]:
    """The same rows as a Markdown table."""
    rule = ["---" if i < left else "---:" for i in range(len(headers))]
    return ["| " + " | ".join(map(str, r)) + " |" for r in [headers, rule, *rows]]


def sections(result: dict) -> list[tuple[str, list[str], list[list[str]], int]]:
    """(title, headers, rows, left-aligned columns) of every table, shared by the text and Markdown forms."""
    mm = result["matmul"]
    out = [("MATMUL REFERENCE (" + result["settings"].get("matmul_dtype", "float32") + "; the best = 100% MFU)",
            ["matmul", "GFLOP/s"], [[f"{r['n']}x{r['n']}", f"{r['flops_per_s'] / 1e9:,.1f}"] for r in mm["sizes"]], 1)]
    out.append(("TRAINING STEP (forward + backward + AdamW step, full context)",
                ["size", "strategy", "trainable", "ms/step", "rounds min-max", "tokens/s", "MFLOP/token",
                 "GFLOP/s", "MFU", "formula"],
                [[r["size"], r["strategy"], f"{r['trainable_params']:,}", f"{r['ms_per_step']:.1f}",
                  f"{min(r['rounds_ms']):.1f}-{max(r['rounds_ms']):.1f}", f"{r['tokens_per_s']:,.0f}",
                  f"{r['flops_per_token'] / 1e6:.1f}", f"{r['flops_per_s'] / 1e9:.1f}", f"{100 * r['mfu']:.1f}%",
                  r["flop_formula"]] for r in result["training"]], 2))
    keys = ("weights", "gradients", "optimizer", "total")
    out.append(("BYTES OF TRAINING STATE (measured after one step | formula: each tensor at its own size, "
                "gradients and AdamW's two moments for each trainable one + 4 B step per tensor)",
                ["size", "strategy", *keys, "formula total", "measured == formula"],
                [[r["size"], r["strategy"], *(human_bytes(r["measured"][k]) for k in keys),
                  human_bytes(r["formula"]["total"]),
                  "yes" if all(r["measured"][k] == r["formula"][k] for k in keys[:3]) else "NO"]
                 for r in result["memory"]], 2))
    out.append(("INFERENCE (one forward pass, batch 1, full context)",
                ["size", "model", "seq", "ms", "rounds min-max", "vs base"],
                [[r["size"], r["case"], str(r["seq_len"]), f"{r['ms']:.2f}",
                  f"{min(r['rounds_ms']):.2f}-{max(r['rounds_ms']):.2f}", f"{r['vs_base']:.3f}x"]
                 for r in result["inference"]], 2))
    g0 = result["generation"][0]
    out.append((f"GENERATION (greedy, batch 1, {g0['prompt_tokens']}-token prompt; timed in every other round: "
                f"median of {g0['runs']} runs)", ["size", "case", "new tokens", "seconds", "tokens/s"],
                [[r["size"], r["case"], str(r["new_tokens"]), f"{r['seconds']:.3f}", f"{r['tokens_per_s']:,.1f}"]
                 for r in result["generation"]], 2))
    if result.get("reference"):
        out.append(("REFERENCE (Hugging Face transformers' GPT-2, PEFT's LoRA: the same shape and work, timed in "
                    "the same rounds; speedup = its time / minitune's)",
                    ["size", "case", "seconds", "minitune case", "minitune seconds", "speedup"],
                    [[r["size"], r["case"], f"{r['seconds']:.4f}", r["minitune_case"], f"{r['minitune_seconds']:.4f}",
                      f"{r['speedup']:.2f}x"] for r in result["reference"]], 2))
    out.append((f"TARGETS (on {result['settings']['target_size']})", ["target", "size", "measured", "target", "result"],
                [[t["name"], t["size"], f"{t['value']:.3f}", f"{t['op']} {t['limit']:g}",
                  "met" if t["met"] else "NOT MET"] for t in result["targets"]], 2))
    return out


def header(result: dict) -> list[str]:
    """Machine, settings, strategies and the load warning, one line each."""
    m, st = result["machine"], result["settings"]
    out = [f"minitune bench | {m['cpu']} | {m['cores']} cores | torch {m['torch']} | {m['threads']} threads | "
           f"device {m['device']}" + (f" ({m['accelerator']}, CUDA {m.get('cuda', '?')})" if "accelerator" in m else ""),
           f"sizes {', '.join(st['sizes'])} | {st['rounds']} rounds, interleaved, median | "
           f"train batch {st.get('batch_note') or st['batch_size']} | {st['dtype']} | "
           f"wall time {result.get('seconds', 0):.0f}s",
           "strategies: " + "; ".join(f"{k}: {v}" for k, v in st["strategies"].items())]
    load = m.get("load_average_1min")
    if load is not None:
        busy = load > 0.5 * m["cores"]
        out.append(f"load average before the run: {load:.2f} on {m['cores']} cores"
                   + (" -- WARNING: other processes were using the CPU; every timing below is noisy, and "
                      "cases made of many small ops (LoRA's side path, cached generation) suffer most"
                      if busy else ""))
    return out


def format_report(result: dict) -> str:
    """The whole run as aligned text: machine, matmul reference, the sections, targets, notes."""
    out = header(result)
    for title, headers, rows, left in sections(result):
        out += ["", title] + _table(headers, rows, left)
    return "\n".join(out + [""] + NOTES)


def format_markdown(result: dict) -> str:
    """The same run as Markdown: the header as a list, each section a table."""
    out = ["# minitune bench", ""] + [f"- {line}" for line in header(result)]
    for title, headers, rows, left in sections(result):
        name, _, detail = title.partition(" (")
        out += ["", f"## {name.capitalize()}", ""] + ([f"({detail}", ""] if detail else []) + _markdown(headers, rows, left)
    return "\n".join(out + [""] + [f"- {n}" for n in NOTES]) + "\n"


def write_outputs(out_dir: str | Path, result: dict, profile_text: str | None = None) -> list[Path]:
    """bench.json, bench.md, bench.txt (and profile.txt) in out_dir; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [(out / "bench.json", None), (out / "bench.md", format_markdown(result)),
             (out / "bench.txt", format_report(result) + "\n")]
    if profile_text is not None:
        files.append((out / "profile.txt", profile_text + "\n"))
    for path, text in files:
        if text is None:
            atomic_write_json(path, result)
        else:
            atomic_write_bytes(path, text.encode())
    return [p for p, _ in files]
