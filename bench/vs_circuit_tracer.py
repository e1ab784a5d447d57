"""clew against circuit-tracer 0.5.0: SmolLM2-135M or Gemma-3-270m with random JumpReLU transcoders,
or the organism with its shipped ones; per-layer (PLT) or cross-layer (CLT).

    python bench/vs_circuit_tracer.py                 # the comparison table (installs circuit-tracer)
    python bench/vs_circuit_tracer.py --model organism --kind clt --budgets 256 all
    python bench/vs_circuit_tracer.py --model smollm2 --kind clt   # a random CLT over all 30 layers
    python bench/vs_circuit_tracer.py --model gemma3 --budgets 256 all
    python bench/vs_circuit_tracer.py --scale         # clew alone on 64 / 256 / 1024-token prompts
    python bench/vs_circuit_tracer.py --budgets 256   # a subset of the rows
    python bench/vs_circuit_tracer.py --ct-batch-size 256   # circuit-tracer at its fastest setting
    python bench/vs_circuit_tracer.py --ct-batch-size 256 --budgets all --repeat 5   # medians of 5 pairs
    python bench/vs_circuit_tracer.py --load 2 --budgets all   # quiet, then beside 2 busy processes

circuit-tracer runs in its own virtual environment (bench/.ctvenv, created on first use with
circuit-tracer==0.5.0, nnsight==0.6.3 and torch==2.13.0) through its nnsight backend. Both tools read
the same transcoders, written once by clew in circuit-tracer's layout (2,048 features per layer,
JumpReLU, reading mlp.hook_in and writing mlp.hook_out, or hook_mlp_out after Gemma's post-MLP norm;
a CLT's features write to every layer from their own up), or the organism's shipped ones (already in
that layout). Both trace the same token ids: circuit-tracer prepends a beginning-of-sequence token
where the tokenizer adds none (SmolLM2's), so clew is given the same ids. Each run is its own process
with 2 threads; time is the attribution call alone, memory the process's peak resident set (which
includes the model). circuit-tracer drops the features and error of position 0 (the prepended
token); edges are compared on the nodes both graphs have. On Gemma, circuit-tracer's embedding
columns lack the model's embedding scale (sqrt(d_model)), so its embedding edges are left out of the
comparison. Both read the dictionary in float32. ``unsure`` counts the features within rounding of
their threshold or active in one tool only, whose error nodes are left out (``compare``); each row
ends with the load average, since a busy machine moves both tools' times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CT_VENV = HERE / ".ctvenv"
WORK = HERE / ".work"
PROMPT = "Fact: the capital of the state containing Dallas is"
N_FEATURES = 2048
ACTIVE_FRACTION = 0.004  # thresholds put about this fraction of features on, per token


@dataclass(frozen=True)
class Subject:
    """A model the comparison runs on."""

    source: str
    """clew's name for it (resolve_model_source)."""
    write: str
    """Where random transcoders write: the MLP's output, or after Gemma's post-MLP norm."""
    prompt: str
    """What is traced."""
    scaled_embeddings: bool = False
    """circuit-tracer's embedding columns lack the model's embedding scale: leave them out of the comparison."""


SUBJECTS = {
    "smollm2": Subject("smollm2-135m", "mlp_out", PROMPT),
    "gemma3": Subject("gemma-3-270m", "resid_delta", PROMPT, scaled_embeddings=True),
    # the organism's own two-hop sentence, six times (about 60 tokens), with its shipped dictionaries
    "organism": Subject(
        "organism", "mlp_out", " ".join(["The capital of the state containing Dallas is Austin."] * 6)
    ),
}


# --- set-up ---------------------------------------------------------------------------------------------


def ensure_ct_venv() -> Path:
    python = CT_VENV / "bin" / "python"
    if not python.exists():
        print("creating bench/.ctvenv with circuit-tracer 0.5.0 (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(CT_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run(pip + ["torch==2.13.0"], check=True)
        subprocess.run(pip + ["circuit-tracer==0.5.0", "nnsight==0.6.3"], check=True)
    return python


def make_transcoders(model_folder: Path, out: Path, kind: str, subject: Subject, seed: int = 0) -> Path:
    """Random JumpReLU transcoders (PLT or CLT) for every layer, thresholds set on the benchmark prompt,
    saved by clew in circuit-tracer's layout."""
    if (out / "config.yaml").exists():
        return out
    import torch

    from clew.dictionaries import save_transcoder
    from clew.dictionaries.transcoder import Transcoder, TranscoderConfig
    from clew.models.loading import load_folder

    model = load_folder(model_folder)
    cfg = TranscoderConfig(
        n_layers=model.cfg.n_layers,
        d_model=model.cfg.d_model,
        n_features=N_FEATURES,
        kind=kind,
        activation="jumprelu",
        read="mlp_in",
        write=subject.write,
        model_name=subject.source,
    )
    tc = Transcoder(cfg)
    g = torch.Generator().manual_seed(seed)
    calib = torch.tensor(
        [prompt_ids(model_folder, subject.prompt, None)]
    )  # thresholds set on the prompt itself
    with torch.no_grad():
        cache = model.run(calib, record=True).cache
        for layer in range(cfg.n_layers):
            x = cache.mlp_in[layer][0]  # (P, D)
            w = torch.randn(N_FEATURES, cfg.d_model, generator=g) / x.norm(dim=-1).mean()
            tc.W_enc[layer] = w
            pre = (x[1:] @ w.T).flatten()  # one threshold per layer, from positions after the first
            tc.threshold[layer] = pre.quantile(1 - ACTIVE_FRACTION).clamp_min(1e-3)
            W_dec = tc.W_dec[layer]  # (F, D), or (F, n_dst, D) for a CLT
            W_dec.copy_(torch.randn(W_dec.shape, generator=g) * 0.05)
            tc.b_dec[layer] = 0.0
    save_transcoder(tc, out)
    return out


def ct_model_folder(model_folder: Path) -> Path:
    """The model folder as older transformers (circuit-tracer's 4.x) reads it: a generic fast tokenizer
    class, and the rotary bases as top-level ``rope_theta`` (and Gemma-3's ``rope_local_base_freq``
    for its sliding layers): 4.x ignores ``rope_parameters``."""
    out = WORK / f"{model_folder.name}-for-ct"
    out.mkdir(parents=True, exist_ok=True)
    for f in model_folder.iterdir():
        if (
            f.is_file()
            and f.name not in ("tokenizer_config.json", "config.json")
            and not (out / f.name).exists()
        ):
            (out / f.name).symlink_to(f)
    config = json.loads((model_folder / "config.json").read_text())
    rope = config.get("rope_parameters", {})
    if "full_attention" in rope:  # Gemma-3: one rotary base per layer type
        config["rope_theta"] = rope["full_attention"]["rope_theta"]
        config["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
    else:
        config["rope_theta"] = rope.get("rope_theta", config.get("rope_theta"))
    (out / "config.json").write_text(json.dumps(config))
    cfg = json.loads((model_folder / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return out


def prompt_ids(model_folder: Path, prompt: str, n_tokens: int | None) -> list[int]:
    """The prompt's ids with a beginning-of-sequence token first, as circuit-tracer makes them (it
    prepends one unless the tokenizer already did)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_folder)
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.pad_token_id
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    if n_tokens is not None:  # a longer prompt: a passage repeated, then the question
        filler = tok(" Dallas is a city in Texas, and Austin is its capital." * 200, add_special_tokens=False)
        need = n_tokens - 1 - len(ids)
        filler = filler["input_ids"] * (1 + need // len(filler["input_ids"]))
        ids = filler[:need] + ids
    return [bos] + ids


# --- workers (each in its own process) ------------------------------------------------------------------


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class AnonymousPeak:
    """The largest anonymous resident memory (``RssAnon``: not the pages of mapped files, such as rows
    kept on disk, which the kernel can drop) seen while it runs, sampled every 0.2 s on Linux."""

    def __init__(self):
        self.peak_mb, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        status = Path("/proc/self/status")
        while not self._stop.wait(0.2):
            try:
                line = next(l for l in status.read_text().splitlines() if l.startswith("RssAnon:"))
            except (OSError, StopIteration):
                return
            self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb


def clew_worker(a: argparse.Namespace) -> None:
    from clew.cli import sleep_when_busy

    passive = sleep_when_busy()  # what the clew command does before torch is imported
    import torch

    torch.set_num_threads(a.threads)
    from clew.attribution import trace
    from clew.dictionaries import load_transcoder
    from clew.models.loading import load_folder

    model = load_folder(Path(a.model_folder), tokenizer=False)
    # in float32, as circuit-tracer reads it (the organism's are stored in float16)
    tc = load_transcoder(a.transcoders, dtype=torch.float32)
    ids = torch.tensor(json.loads(a.ids))
    anonymous = AnonymousPeak()
    t0 = time.perf_counter()
    graph = trace(model, tc, ids, max_feature_nodes=a.budget, batch_size=a.batch_size, progress=False)
    seconds = time.perf_counter() - t0
    anonymous_mb = anonymous.stop()
    graph.save(a.out)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mb": peak_mb(),
                "peak_anonymous_mb": anonymous_mb,
                "rows_on_disk": graph.settings["rows_on_disk"],
                "n_active": graph.settings["n_active_features"],
                "passive": passive,
            }
        )
    )


def ct_worker(a: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(a.threads)
    import yaml
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    tc_folder = Path(a.transcoders)
    config = yaml.safe_load((tc_folder / "config.yaml").read_text())
    hooks = dict(
        feature_input_hook=config["feature_input_hook"], feature_output_hook=config["feature_output_hook"]
    )
    device = torch.device("cpu")
    if config["model_kind"] == "cross_layer_transcoder":
        tcs = load_clt(str(tc_folder), scan="random", device=device, dtype=torch.float32, **hooks)
    else:
        n_layers = len(list(tc_folder.glob("layer_*.safetensors")))
        paths = {i: str(tc_folder / f"layer_{i}.safetensors") for i in range(n_layers)}
        tcs = load_transcoder_set(paths, scan="random", device=device, **hooks)
    folder = ct_model_folder(Path(a.model_folder))
    model = ReplacementModel.from_pretrained_and_transcoders(
        str(folder), tcs, backend="nnsight", device=device
    )
    ids = torch.tensor(json.loads(a.ids))
    t0 = time.perf_counter()
    graph = attribute(ids, model, max_feature_nodes=a.budget, batch_size=a.batch_size or 512)
    seconds = time.perf_counter() - t0
    torch.save(
        {
            "adjacency": graph.adjacency_matrix,
            "active_features": graph.active_features,
            "selected_features": graph.selected_features,
            "logit_tokens": torch.tensor([t.vocab_idx for t in graph.logit_targets]),
        },
        a.out,
    )
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb(), "n_active": len(graph.active_features)}))


# --- comparison -----------------------------------------------------------------------------------------


def clew_active(model_folder: Path, transcoders: Path, ids: list[int]) -> tuple[set, set]:
    """The (layer, position, index) of every feature that clew finds active on ``ids`` (budgeted graphs
    keep only some), and of those whose pre-activation lies within 1e-4 (relative) of their threshold:
    summed in another order (other threads, other batch shapes), such a feature may be on or off."""
    import torch

    from clew.dictionaries import load_transcoder
    from clew.models.loading import load_folder

    model = load_folder(model_folder, tokenizer=False)
    tc = load_transcoder(transcoders, dtype=torch.float32)
    active, near = set(), set()
    with torch.no_grad():
        cache = model.run(torch.tensor([ids]), record=True).cache
        for layer in tc.layers:
            pre = tc.pre_activations(layer, cache.read(tc.cfg.read, layer)[0])  # (P, F)
            threshold = tc.threshold_of(layer)
            close = torch.zeros_like(pre, dtype=torch.bool)
            if threshold is not None:
                close = (pre - threshold).abs() <= 1e-4 * threshold.abs()
            for found, where in ((active, tc.activate(layer, pre) != 0), (near, close)):
                pos, index = where.nonzero(as_tuple=True)
                found |= {(layer, p, i) for p, i in zip(pos.tolist(), index.tolist())}
    return active, near


def compare(
    clew_path: Path,
    ct_path: Path,
    active: tuple[set, set],
    cross_layer: bool,
    embeddings: bool = True,
) -> tuple[float, float, int]:
    """Largest |difference| over the edges between nodes both graphs have, the largest |edge| compared,
    and how many features may be active in one tool only.

    ``active``: :func:`clew_active`. Left out: the embeddings' columns unless ``embeddings``, and the
    error nodes written by a feature that is active in one tool only or within rounding of its
    threshold (summed in another order it may fall on the other side, and its write then lands in the
    other tool's error node)."""
    import torch

    from clew.attribution import Graph

    ours = Graph.load(clew_path)
    theirs = torch.load(ct_path)
    L, P = ours.n_layers, ours.n_pos
    active_t, sel = theirs["active_features"], theirs["selected_features"]
    their_feats = active_t[sel]  # (Nf', 3) layer, pos, index
    n_t = len(their_feats)
    key = {tuple(f): i for i, f in enumerate(ours.features.tolist())}
    pairs = [(i, key[tuple(f)]) for i, f in enumerate(their_feats.tolist()) if tuple(f) in key]
    t_idx = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    o_idx = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    # columns: matched features, then errors and embeddings (same layout in both), rows: matched features, logits
    t_cols = torch.cat([t_idx, n_t + torch.arange(L * P + P)])
    o_cols = torch.cat([o_idx, ours.error_offset + torch.arange(L * P + P)])
    A_t = theirs["adjacency"]
    t_rows_logit = n_t + L * P + P + torch.arange(len(theirs["logit_tokens"]))
    same_logits = torch.equal(theirs["logit_tokens"], ours.logit_tokens)
    t_rows = torch.cat([t_idx, t_rows_logit]) if same_logits else t_idx
    o_rows = torch.cat([o_idx, ours.n_features + torch.arange(ours.n_logits)]) if same_logits else o_idx
    a = A_t[t_rows][:, t_cols].float()
    b = ours.adjacency[o_rows][:, o_cols].float()
    # circuit-tracer zeroes position 0's sources; compare the columns it keeps
    keep = torch.ones(len(o_cols), dtype=torch.bool)
    feats_pos0 = ours.features[o_idx, 1] == 0
    keep[: len(o_idx)] = ~feats_pos0
    errors_pos0 = torch.arange(L) * P
    keep[len(o_idx) + errors_pos0] = False
    if not embeddings:
        keep[len(o_idx) + L * P :] = False
    ours_on, near = active
    differ = ({f for f in ours_on if f[1] > 0} ^ {tuple(f) for f in active_t.tolist()}) | near
    for layer, pos, _ in differ:  # the error nodes its write lands in: its layer (and those above, for a CLT)
        for dst in range(layer, L if cross_layer else layer + 1):
            keep[len(o_idx) + dst * P + pos] = False
    b = b[:, keep]
    return float((a[:, keep] - b).abs().max()), float(b.abs().max()), len(differ)


def run_worker(python: str, kind: str, a: argparse.Namespace, ids: list[int], budget, out: Path) -> dict:
    cmd = [
        python,
        __file__,
        "--worker",
        kind,
        "--model-folder",
        str(a.model_folder),
        "--transcoders",
        str(a.transcoders),
        "--ids",
        json.dumps(ids),
        "--out",
        str(out),
        "--threads",
        str(a.threads),
    ]
    batch_size = a.ct_batch_size if kind == "ct" and a.ct_batch_size is not None else a.batch_size
    if batch_size is not None:
        cmd += ["--batch-size", str(batch_size)]
    if budget is not None:
        cmd += ["--budget", str(budget)]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": str(HERE.parent)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=list(SUBJECTS), default="smollm2", help="the model (default smollm2)")
    p.add_argument(
        "--kind",
        choices=["plt", "clt"],
        default="plt",
        help="per-layer or cross-layer transcoders: random ones for smollm2 and gemma3, the shipped ones for the organism",
    )
    p.add_argument("--worker", choices=["clew", "ct"])
    p.add_argument("--model-folder")
    p.add_argument("--transcoders")
    p.add_argument("--ids")
    p.add_argument("--out")
    p.add_argument("--budget", type=int)
    p.add_argument("--budgets", nargs="+", default=["256", "1024", "all"])
    p.add_argument("--batch-size", type=int, help="clew: automatic by default; circuit-tracer: 512")
    p.add_argument("--ct-batch-size", type=int, help="circuit-tracer alone (e.g. 256, where it is fastest)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--scale", action="store_true", help="clew alone: 64, 256, 1024 tokens, budget 4096 (or --budget)"
    )
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each pair this many times (clew, then circuit-tracer, in turn) and report the median "
        "time of each tool, with every pair's figures beside; circuit-tracer's time alone varies by "
        "half from run to run here",
    )
    p.add_argument(
        "--load",
        type=int,
        default=0,
        help="also run every row beside this many processes busy multiplying matrices (one thread each), "
        "and report each tool's slowdown",
    )
    a = p.parse_args()
    if a.worker == "clew":
        return clew_worker(a)
    if a.worker == "ct":
        return ct_worker(a)

    from clew.assets import ORGANISM
    from clew.models.sources import resolve_model_source

    WORK.mkdir(exist_ok=True)
    subject = SUBJECTS[a.model]
    a.model_folder = resolve_model_source(subject.source)
    if a.model == "organism":
        a.transcoders = ORGANISM.dictionary_path(a.kind)
    else:
        a.transcoders = make_transcoders(a.model_folder, WORK / f"random-{a.model}-{a.kind}", a.kind, subject)
    tag = f"{a.model}-{a.kind}"
    if a.scale:
        budget = a.budget or 4096
        print(f"clew alone, budget {budget} feature nodes, {a.threads} threads")
        print(
            f"{'tokens':>7} {'active':>8} {'time s':>8} {'peak MB':>8} {'MB/token':>9} {'anon MB':>8} {'rows on disk':>12}"
        )
        for n in a.lengths:
            ids = prompt_ids(a.model_folder, subject.prompt, n)
            r = run_worker(sys.executable, "clew", a, ids, budget, WORK / f"scale-{tag}-{n}.safetensors")
            print(
                f"{len(ids):>7} {r['n_active']:>8} {r['seconds']:>8.2f} {r['peak_mb']:>8.0f} {r['peak_mb'] / len(ids):>9.2f}"
                f" {r['peak_anonymous_mb']:>8.0f} {'yes' if r['rows_on_disk'] else 'no':>12}"
            )
        return
    ct_python = str(ensure_ct_venv())
    ids = prompt_ids(a.model_folder, subject.prompt, None)
    print(
        f"{subject.source}, {a.kind.upper()} {a.transcoders.name}; prompt {subject.prompt!r}: {len(ids)} tokens "
        f"(with the BOS), {a.threads} threads, load average {os.getloadavg()[0]:.2f}"
    )
    # Every timed run first, with this process idle: torch work here (finding the active features,
    # comparing graphs) slowed the next worker, which was clew's (its full graph: 2.4 s after an idle
    # parent, 3.0 to 4.1 s right after one that had run the model).
    runs = {}
    for b in a.budgets:
        budget = None if b == "all" else int(b)
        pairs = [
            (
                run_worker(sys.executable, "clew", a, ids, budget, WORK / f"clew-{tag}-{b}.safetensors"),
                run_worker(ct_python, "ct", a, ids, budget, WORK / f"ct-{tag}-{b}.pt"),
            )
            for _ in range(a.repeat)
        ]
        ours, theirs = _median_run([p[0] for p in pairs]), _median_run([p[1] for p in pairs])
        runs[b] = (ours, theirs, os.getloadavg()[0])
        if a.repeat > 1:
            print(
                f"{b:>7}: clew "
                + " ".join(f"{p[0]['seconds']:.2f}" for p in pairs)
                + " s; circuit-tracer "
                + " ".join(f"{p[1]['seconds']:.2f}" for p in pairs)
                + " s; speed-ups "
                + " ".join(f"{p[1]['seconds'] / p[0]['seconds']:.1f}x" for p in pairs)
            )
    loaded_runs = loaded(a, ct_python, ids, tag) if a.load else {}
    active = clew_active(a.model_folder, a.transcoders, ids)
    print(
        f"{'budget':>7} {'active':>7} {'clew s':>8} {'ct s':>8} {'speed-up':>9} {'clew MB':>8} {'ct MB':>8} {'mem ratio':>9} {'max |dA|':>10} {'max |A|':>9} {'unsure':>7}"
    )
    for b, (ours, theirs, load) in runs.items():
        diff, scale, n_differ = compare(
            WORK / f"clew-{tag}-{b}.safetensors",
            WORK / f"ct-{tag}-{b}.pt",
            active,
            a.kind == "clt",
            not subject.scaled_embeddings,
        )
        print(
            f"{b:>7} {ours['n_active']:>7} {ours['seconds']:>8.2f} {theirs['seconds']:>8.2f} "
            f"{theirs['seconds'] / ours['seconds']:>8.1f}x {ours['peak_mb']:>8.0f} {theirs['peak_mb']:>8.0f} "
            f"{theirs['peak_mb'] / ours['peak_mb']:>8.2f}x {diff:>10.2e} {scale:>9.2e} {n_differ:>7}  load {load:.2f}"
        )
    if a.load:
        print(
            f"\nbeside {a.load} busy processes (load average {loaded_runs.pop('load'):.1f} when it started)"
        )
        print(
            f"{'budget':>7} {'clew s':>8} {'ct s':>8} {'speed-up':>9} {'clew slowdown':>14} {'ct slowdown':>12}"
        )
        for b, (ours, theirs) in loaded_runs.items():
            q_ours, q_theirs = runs[b][0]["seconds"], runs[b][1]["seconds"]
            print(
                f"{b:>7} {ours['seconds']:>8.2f} {theirs['seconds']:>8.2f} {theirs['seconds'] / ours['seconds']:>8.1f}x "
                f"{ours['seconds'] / q_ours:>13.1f}x {theirs['seconds'] / q_theirs:>11.1f}x"
                + ("  (clew's idle threads slept)" if ours.get("passive") else "")
            )


def _median_run(runs: list[dict]) -> dict:
    """The run of median time (the lower middle one of an even number), with the largest peak memory
    of them all."""
    ranked = sorted(runs, key=lambda r: r["seconds"])
    return {**ranked[(len(ranked) - 1) // 2], "peak_mb": max(r["peak_mb"] for r in runs)}


BUSY = "import torch\ntorch.set_num_threads(1)\nx = torch.randn(512, 512)\nwhile True:\n    x = torch.tanh(x @ x)\n"


def loaded(a: argparse.Namespace, ct_python: str, ids: list[int], tag: str) -> dict:
    """Every row again beside ``a.load`` busy processes: both tools' runs per budget, and the load
    average when they started (``"load"``)."""
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(a.load)]
    out: dict = {}
    try:
        time.sleep(3)
        out["load"] = os.getloadavg()[0]
        for b in a.budgets:
            budget = None if b == "all" else int(b)
            ours = run_worker(
                sys.executable, "clew", a, ids, budget, WORK / f"clew-{tag}-{b}-loaded.safetensors"
            )
            theirs = run_worker(ct_python, "ct", a, ids, budget, WORK / f"ct-{tag}-{b}-loaded.pt")
            out[b] = (ours, theirs)
    finally:
        for p in busy:
            p.kill()
    return out


if __name__ == "__main__":
    main()
