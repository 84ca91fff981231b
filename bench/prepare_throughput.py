"""Benchmark (not a test): `cpt.prepare` end-to-end throughput at each `data.num_proc`, next to the raw batch-tokenizer
rate on the same text with as many processes, and prepare's peak RSS on a corpus and on the same corpus x10 (memory
must stay flat).

    python bench/prepare_throughput.py [--copies 10] [--remix 4] [--num-proc 1,2] [--pdf PATH | --pdf none]
                                       [--parquet-only] [--tokenizer DIR]

Corpora: the licenses; the same text remixed into `--remix` times as many distinct documents (where start-up
weighs less); the licenses x`--copies` (near-duplicates: dedup's work). "start-up" is the wall time of the same
command once the data is up to date (interpreter, hydra, tokenizer, file listing, fingerprint): what a corpus of
any size pays once; "after start-up" rates leave it out.

Then the remixed corpus as a Parquet dataset in the hub's layout, read as `hf: {path: <dir>}` (issue 24): tokens/s
end to end and after start-up against the raw tokenizer (two ways), and peak RSS of it and of it x10, with near-dedup
and without; `--tokenizer DIR` runs this section with another tokenizer (e.g. Qwen2.5's).

Then one big PDF (default: the R reference manual of Debian's r-doc-pdf, 2,415 pages) at each num_proc: its pages
are read in ranges of data.convert.pdf_pages_per_task by the workers.

Corpus: the 2,310 license texts of licensedcode-data (python -m cpt.corpora). Tokenizer: a byte-level BPE
(8,192 ids) trained here on that corpus with the `tokenizers` library, saved as a transformers tokenizer
directory, so the numbers reflect a real BPE rather than the byte tokenizer. The x10 corpus holds 10 copies of
every file, each copy with its own last line, so exact dedup cannot drop them: they go through conversion,
cleaning and MinHash near-dedup, which removes them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]


def train_bpe(corpus: Path, out: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(p) for p in sorted(corpus.glob("*.LICENSE"))], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(out)
    return out


def remix(corpus: Path, out: Path, copies: int, per_doc: int = 16) -> Path:
    """A bigger corpus of distinct documents: the paragraphs of every license (front matter left out), shuffled
    once per copy and regrouped `per_doc` to a file. Near-dedup keeps almost all of it (a remixed document shares
    few 5-word shingles with any other), so it measures throughput on `copies` times the licenses' text."""
    import random
    import re

    paragraphs = []
    for f in sorted(corpus.glob("*.LICENSE")):
        text = f.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---") and (end := text.find("\n---", 3)) > 0:
            text = text[end + 4 :]
        paragraphs += [p.strip() for p in re.split(r"\n\s*\n", text) if len(p.strip()) > 40]
    out.mkdir()
    for c in range(copies):
        order = list(paragraphs)
        random.Random(c).shuffle(order)
        for n in range(0, len(order), per_doc):
            (out / f"{c}-{n // per_doc:05d}.txt").write_text("\n\n".join(order[n : n + per_doc]) + "\n")
    return out


def run_prepare(paths: str, tokenizer: Path, root: Path, num_proc: int, fmt: str = "text",
                hf: Optional[str] = None, extra: tuple = ()) -> dict:
    source = f"hf: {{path: '{hf}'}}" if hf else f"paths: ['{paths}'], format: {fmt}"
    cmd = [sys.executable, "-m", "cpt.prepare", "data=sample", "data.name=bench", f"data.root={root}",
           f"data.sources=[{{name: legal, {source}}}]", f"model.tokenizer={tokenizer}",
           f"model.arch.vocab_size={vocab_size(tokenizer)}", f"data.num_proc={num_proc}", "data.clean.min_chars=100",
           *extra]
    # a fresh wrapper process per measurement: RUSAGE_CHILDREN is then this prepare's peak (datasets' workers too)
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"prepare failed:\n{proc.stderr[-4000:]}")
    peak = int(proc.stderr.strip().splitlines()[-1])
    manifest = json.loads((root / "bench" / "manifest.json").read_text())
    report = json.loads((root / "bench" / "report.json").read_text())
    return {"wall_s": wall, "tokens": manifest["tokens"], "files": len(report["files"]),
            "stages": manifest["stage_seconds"], "work_s": manifest["seconds"], "cpu": manifest["cpu_seconds"],
            "dropped": report["summary"]["dropped"].get("legal", {}),
            "peak_rss_mib": peak / 1024}


def vocab_size(tokenizer: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer / "tokenizer.json")).get_vocab_size(with_added_tokens=True)


def to_parquet(text_dir: Path, out: Path, files: int = 4, row_group: int = 256) -> Path:
    """The documents of a remixed corpus (one per text file) as `files` Parquet files of `row_group` rows per group,
    the layout of a dataset on the hub (data/train-0000i-of-0000n.parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f.read_text() for f in sorted(text_dir.glob("*.txt"))]
    (out / "data").mkdir(parents=True)
    per_file = -(-len(texts) // files)
    for i in range(files):
        table = pa.table({"text": texts[i * per_file : (i + 1) * per_file]})
        pq.write_table(table, out / "data" / f"train-{i:05d}-of-{files:05d}.parquet", row_group_size=row_group)
    return out


def parquet_section(corpus: Path, tokenizer: Path, tmp: Path, counts: list[int], remix_x: int) -> None:
    """Parquet (issue 24): the remixed corpus (x`remix_x`) as a hub-layout dataset read through `hf: {path: <dir>}`
    (row groups are the units of work): end-to-end and after-start-up tokens/s at each num_proc against the raw
    tokenizer at the same process count, measured two ways — cpt's tokenizer (transformers, its own threads) and the
    Rust backend alone with one thread per process (what prepare's tokenizer workers run) — then the same corpus
    x10 (distinct documents: ten times the work) for peak RSS, with near-dedup and without."""
    rows, rss = [], {}  # rss: the runs at the most processes, by (copies, near-dedup off)
    datasets = {x: to_parquet(remix(corpus, tmp / f"pq-text-{x}", x), tmp / f"pq-{x}") for x in (remix_x, 10 * remix_x)}
    for x in (remix_x, 10 * remix_x):
        shutil.rmtree(tmp / f"pq-text-{x}")
    near_off = ("data.dedup.near=false",)
    for copies, nprocs, extra in ((remix_x, counts, ()), (10 * remix_x, [max(counts)], ()),
                                  (remix_x, [max(counts)], near_off), (10 * remix_x, [max(counts)], near_off)):
        for n in nprocs:
            root = tmp / f"pq-run-{copies}-{n}"
            run = run_prepare("", tokenizer, root, n, hf=str(datasets[copies]), extra=extra)
            run["startup_s"] = run_prepare("", tokenizer, root, n, hf=str(datasets[copies]), extra=extra)["wall_s"]
            raws = None
            if copies == remix_x and not extra:
                docs = root / "bench" / "docs"
                raws = (raw_tokenizer_rate(tokenizer, docs, n), raw_tokenizer_rate(tokenizer, docs, n, backend=True))
            name = f"remixed x{copies} ({len(list(datasets[copies].rglob('*.parquet')))} files)"
            rows.append((name + (", near-dedup off" if extra else ""), n, run, raws))
            if n == max(counts):
                rss[copies, bool(extra)] = run
            shutil.rmtree(root)
    print("\n| Parquet corpus | num_proc | tokens out | wall s | start-up s | tokens/s end to end | tokens/s after "
          "start-up | raw: cpt tokenizer | raw: backend, 1 thread | end to end / raw (either) | after start-up / raw "
          "(either) | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, n, r, raws in rows:
        rate, work = r["tokens"] / r["wall_s"], r["tokens"] / (r["wall_s"] - r["startup_s"])
        cells = (f"{raws[0]:,.0f} | {raws[1]:,.0f} | {rate / raws[0]:.2f} / {rate / raws[1]:.2f} | "
                 f"{work / raws[0]:.2f} / {work / raws[1]:.2f} |") if raws else "— | — | — | — |"
        print(f"| {name} | {n} | {r['tokens']:,} | {r['wall_s']:.1f} | {r['startup_s']:.1f} | {rate:,.0f} | "
              f"{work:,.0f} | {cells} {r['peak_rss_mib']:,.0f} |")
    for off in (False, True):
        one, ten = rss[remix_x, off], rss[10 * remix_x, off]
        print(f"\npeak RSS x10 / x1 (remixed x{remix_x} -> x{10 * remix_x}{', near-dedup off' if off else ''}, "
              f"num_proc={max(counts)}) = **{ten['peak_rss_mib'] / one['peak_rss_mib']:.2f}** "
              f"({one['tokens']:,} -> {ten['tokens']:,} tokens)")


_TOKENIZER = None


def _load(path: str, one_thread: bool, backend: bool) -> None:
    global _TOKENIZER
    if one_thread:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from cpt.model.tokenizer import HFTokenizer, worker_encoder

    _TOKENIZER = worker_encoder(HFTokenizer(path)) if backend else HFTokenizer(path)


def _count(texts: list[str]) -> int:
    return sum(len(ids) + 1 for ids in _TOKENIZER.encode_batch(texts))


def raw_tokenizer_rate(tokenizer: Path, docs_dir: Path, num_proc: int, one_thread: bool = False,
                       backend: bool = False, repeats: int = 3) -> float:
    """Tokens/s of the batch tokenizer alone (batches of 256 documents) in `num_proc` processes, started and
    loaded before the clock starts; best of `repeats` (shared cores are noisy). one_thread: each process's
    tokenizer on one thread (as in prepare's workers), else on as many as it likes (all cores). backend: the Rust
    backend alone, one thread per process — what prepare's tokenizer workers run (cpt.model.tokenizer's
    worker_encoder)."""
    import multiprocessing

    texts = [json.loads(line)["text"] for f in sorted(docs_dir.glob("*.jsonl")) for line in f.open()]
    batches = [texts[i : i + 256] for i in range(0, len(texts), 256)]
    with multiprocessing.get_context("spawn").Pool(num_proc, _load, (str(tokenizer), one_thread or backend,
                                                                      backend)) as pool:
        pool.map(_count, [batches[0]] * num_proc)  # every worker loaded and warm
        best = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            tokens = sum(pool.map(_count, batches, chunksize=1))
            best = max(best, tokens / (time.perf_counter() - start))
        return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=10, help="copies of every license in the near-duplicate corpus")
    ap.add_argument("--remix", type=int, default=4, help="size of the remixed corpus, in licenses' worth of text")
    ap.add_argument("--num-proc", default="1,2", help="data.num_proc values to compare, comma-separated")
    ap.add_argument("--pdf", default=None, help="a big PDF to time at each num_proc (default: the R reference "
                                                 "manual if r-doc-pdf is installed; 'none': skip)")
    ap.add_argument("--parquet-only", action="store_true", help="only the Parquet section (issue 24)")
    ap.add_argument("--tokenizer", default=None, help="the Parquet section's tokenizer directory (default: the BPE "
                                                       "trained here; e.g. the Qwen2.5 tokenizer's directory)")
    args = ap.parse_args()
    from cpt.assets.corpora import corpus_path, fetch_licenses

    pdf = Path(args.pdf) if args.pdf not in (None, "none") else corpus_path("r-manuals") / "refman.pdf"
    pdf = pdf if args.pdf != "none" and pdf.is_file() else None

    corpus = fetch_licenses()
    counts = [int(n) for n in args.num_proc.split(",")]
    rows, ratios = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer = train_bpe(corpus, tmp / "bpe")
        if args.parquet_only:
            return parquet_section(corpus, Path(args.tokenizer) if args.tokenizer else tokenizer, tmp, counts,
                                   args.remix)
        big = tmp / "x10"
        big.mkdir()
        for f in sorted(corpus.glob("*.LICENSE")):
            text = f.read_text(encoding="utf-8", errors="replace")
            for c in range(args.copies):
                (big / f"{c}-{f.name}").write_text(f"{text}\n(copy {c})" if c else text)
        mixed = remix(corpus, tmp / "remix", args.remix)
        for name, path in (("licenses", corpus), (f"licenses remixed x{args.remix}", mixed)):
            for n in counts:
                run = run_prepare(str(path), tokenizer, tmp / f"run-{n}", n)
                run["startup_s"] = run_prepare(str(path), tokenizer, tmp / f"run-{n}", n)["wall_s"]  # up to date
                docs = tmp / f"run-{n}" / "bench" / "docs"
                raw = raw_tokenizer_rate(tokenizer, docs, n)
                run["raw_one_thread"] = raw_tokenizer_rate(tokenizer, docs, n, one_thread=True)
                rows.append((name, n, run, raw))
                ratios[name, n] = run
                shutil.rmtree(tmp / f"run-{n}")
        ten = run_prepare(str(big), tokenizer, tmp / "ten", max(counts))
        rows.append((f"licenses x{args.copies} (near-duplicates)", max(counts), ten, None))
        pdfs = {n: run_prepare(str(pdf), tokenizer, tmp / f"pdf-{n}", n, "pdf") for n in counts} if pdf else {}
        rows += [(pdf.name, n, r, None) for n, r in pdfs.items()]

    print(f"# prepare throughput, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores\n")
    print("| corpus | num_proc | files | tokens out | wall s | start-up s | convert s | tokenize tail s | CPU s "
          "(prepare + workers) | tokens/s end to end | tokens/s after start-up | raw tokenizer tokens/s | "
          "raw, 1 thread per process | end to end / raw | after start-up / raw | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, n, r, raw in rows:
        rate, work = r["tokens"] / r["wall_s"], r["tokens"] / r["work_s"]
        startup = f"{r['startup_s']:.1f}" if "startup_s" in r else "—"
        cpu = " + ".join(f"{v:.1f}" for v in r["cpu"].values())
        print(f"| {name} | {n} | {r['files']:,} | {r['tokens']:,} | {r['wall_s']:.1f} | {startup} | "
              f"{r['stages']['convert']:.1f} | {r['stages']['tokenize']:.1f} | {cpu} | {rate:,.0f} | {work:,.0f} | "
              + (f"{raw:,.0f} | {r['raw_one_thread']:,.0f} | {rate / raw:.2f} | {work / raw:.2f} |" if raw
                 else "— | — | — | — |") + f" {r['peak_rss_mib']:,.0f} |")
    lo, hi = min(counts), max(counts)
    if lo != hi:
        print()
        for name in dict.fromkeys(name for name, _ in ratios):
            a, b = ratios[name, lo], ratios[name, hi]
            print(f"{name}: num_proc={hi} / num_proc={lo} = **{a['wall_s'] / b['wall_s']:.2f}x** end to end "
                  f"({a['wall_s']:.1f} s -> {b['wall_s']:.1f} s), {a['work_s'] / b['work_s']:.2f}x after start-up")
    if len(pdfs) > 1:
        print(f"{pdf.name}, num_proc={hi} / num_proc={lo} wall time: **{pdfs[hi]['wall_s'] / pdfs[lo]['wall_s']:.2f}** "
              f"({pdfs[lo]['wall_s']:.1f} s -> {pdfs[hi]['wall_s']:.1f} s)")
    one = next(r for name, n, r, _ in rows if name == "licenses" and n == hi)
    print(f"peak RSS x{args.copies} / x1 (num_proc={hi}) = {ten['peak_rss_mib'] / one['peak_rss_mib']:.2f}; "
          f"x{args.copies} dropped {ten['dropped']}")
    with tempfile.TemporaryDirectory() as tmp:
        parquet_section(corpus, Path(args.tokenizer) if args.tokenizer else train_bpe(corpus, Path(tmp) / "bpe"),
                        Path(tmp), counts, args.remix)


if __name__ == "__main__":
    main()
