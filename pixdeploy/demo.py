"""`pixdeploy demo`: the whole pipeline on built-in data, on a laptop CPU, in a few minutes.

Makes a set of images of rendered numbers, trains the `tiny` preset on them (on 24x24 images, with one
image layer), asks the model to read held-out images it never saw and reports how many it read right,
then exports, checks parity, and quantizes to fp16 and int8, each held to fp32's reading.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pixdeploy.errors import PixdeployError
from pixdeploy.files import writing

MARKER = ".pixdeploy-demo"  # only a directory carrying this is ever replaced by --force


@dataclass(frozen=True)
class DemoPlan:
    n_train: int = 6000
    n_eval: int = 200
    max_number: int = 9  # single digits: learnable by a 0.3M-parameter model in minutes on 2 cores
    # The tiny preset, cheapened where reading does not need it: the image encoder is ~all of the compute
    # (every pixel a token), so 24x24 images (576 pixel tokens, not 1024) and one image layer, not two,
    # make an example ~3.5x cheaper; the decoder is unchanged. Measured at word weight 30 on 2 cores: the
    # full tiny preset read 42% of held-out digits after 300 steps (158 s); this one 84% after 1000 (187 s).
    model: tuple = (("image_size", 24), ("image_layers", 1))
    steps: int = 800  # 600 steps read 67% (two seeds), 1000 read 84%
    batch_size: int = 16
    lr: float = 1e-3  # above ~2e-3 the decoder never learns to attend to single windows
    # Each image has 576 pixel targets and 2 word targets (the digit, then </s>): at the paper's weight 1
    # reading gets 0.3% of the loss, and the full tiny preset needed 1500 steps (15 min) to read 73%.
    word_loss_weight: float = 30.0
    vocab_size: int = 64
    variants: tuple = (("fp16", "cpu"), ("int8", "cpu"))  # (precision, target) quantized after export

    def config(self):
        from pixdeploy.config import preset

        return preset("tiny").replace(**dict(self.model))

    def describe(self) -> str:
        return "the tiny preset" + "".join(f", {k} {v}" for k, v in self.model)


def read_images(model, tokenizer, examples, batch_size: int = 50) -> list[tuple[str, str]]:
    """Generate a caption for each held-out (image, caption) example: [(truth, read)]."""
    import torch

    from pixdeploy.folding import prepare_batch
    from pixdeploy.generation import Sampling, generate_text

    pairs = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        images, sizes = prepare_batch([ex.segments[0] for ex in chunk], model.cfg.image_size)
        read = generate_text(model, tokenizer, torch.from_numpy(images), torch.from_numpy(sizes),
                             sampling=Sampling(max_new_tokens=8))
        pairs += [(ex.texts[0].strip(), r.strip()) for ex, r in zip(chunk, read)]
    return pairs


def prepare_workdir(workdir: Path, force: bool) -> None:
    if workdir.exists() and not workdir.is_dir():
        raise PixdeployError(f"{workdir} exists and is not a folder; choose another --workdir")
    if workdir.exists() and any(workdir.iterdir()):
        if not force:
            raise PixdeployError(f"{workdir} already exists; pass --force to replace an earlier demo "
                                 "or --workdir to choose another directory")
        if not (workdir / MARKER).exists():
            raise PixdeployError(f"{workdir} is not a pixdeploy demo directory; refusing to replace it")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("created by pixdeploy demo\n")


def run_demo(workdir: Path, steps: int | None = None, force: bool = False, echo=print,
             plan: DemoPlan = DemoPlan()) -> dict:
    t0 = time.perf_counter()
    workdir = Path(workdir)
    created = not workdir.exists()
    prepare_workdir(workdir, force)
    try:
        with writing(workdir):  # a full disk names the demo's folder
            return _run_demo(workdir, steps, plan, echo, t0)
    except BaseException:
        # Nothing half-made stays behind (rendered images, a run, a bundle: megabytes): the folder is left as
        # prepare_workdir made it, holding only its marker, or removed when this call created it.
        for p in workdir.iterdir():
            if p.name == MARKER:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        if created:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _run_demo(workdir: Path, steps: int | None, plan: DemoPlan, echo, t0: float) -> dict:
    from pixdeploy.checkpoint import Checkpoint
    from pixdeploy.data import load_examples
    from pixdeploy.demo_data import make_demo_set
    from pixdeploy.training import RunOptions, TrainConfig, train

    cfg = plan.config()

    echo(f"[1/5] rendering {plan.n_train} training and {plan.n_eval} held-out images of numbers "
         f"0-{plan.max_number} into {workdir / 'data'}")
    train_txt, eval_txt = make_demo_set(workdir / "data", plan.n_train, plan.n_eval, cfg.image_size,
                                        plan.max_number)

    steps = steps or plan.steps
    tc = TrainConfig(steps=steps, batch_size=plan.batch_size, lr=plan.lr, warmup=min(100, steps),
                     eval_every=max(1, steps // 4), ckpt_every=max(1, steps // 4), log_every=10,
                     vocab_size=plan.vocab_size, num_workers=1, word_loss_weight=plan.word_loss_weight)
    echo(f"[2/5] training {plan.describe()} for {steps} steps on {_device_name()}")
    summary = train(train_txt, workdir / "run", cfg, tc, RunOptions(eval_data=eval_txt))
    echo(f"      loss {summary['loss']:.3f}, held-out pixel loss {summary['eval_pixel_loss']:.3f}, "
         f"word loss {summary['eval_word_loss']:.3f}; {summary['pixel_tokens_per_s']:,.0f} pixel tokens/s")

    echo(f"[3/5] reading {plan.n_eval} held-out images the model never saw (PyTorch)")
    ckpt = Checkpoint(workdir / "run")
    held_out = load_examples(eval_txt)
    pairs = read_images(ckpt.load_model(), ckpt.tokenizer, held_out)
    right = sum(truth == read for truth, read in pairs)
    for truth, read in pairs[:8]:
        echo(f"      shows {truth:>3}  read {read!r:6} {'ok' if truth == read else 'wrong'}")
    chance = 100 / (plan.max_number + 1)
    echo(f"read {right}/{len(pairs)} held-out numbers right ({100 * right / len(pairs):.1f}%; "
         f"chance is {chance:.0f}%)")

    echo("[4/5] exporting to ONNX, checking parity, reading the same images with the torch-free runtime")
    from pixdeploy.export.bundle import export_bundle
    from pixdeploy.runtime import Pipeline

    parity_images = [ex.segments[0] for ex in held_out[:16]]
    bundle, parity = export_bundle(ckpt.path, workdir / "bundle", images=parity_images, echo=lambda *_: None)
    for line in parity.table().splitlines():
        echo(line)
    pipe = Pipeline.load(bundle.path, device="cpu")
    runtime_read = pipe.generate_batch([ex.segments[0] for ex in held_out], max_new_tokens=8)
    same = sum(r.strip() == p[1] for r, p in zip(runtime_read, pairs))
    runtime_right = sum(r.strip() == p[0] for r, p in zip(runtime_read, pairs))
    echo(f"runtime read {runtime_right}/{len(pairs)} right; {same}/{len(pairs)} answers identical to PyTorch's")
    if same != len(pairs):
        raise PixdeployError(f"the runtime disagreed with PyTorch on {len(pairs) - same} held-out images")

    names = " and ".join(f"{p} ({t})" for p, t in plan.variants) or "nothing (this plan)"
    echo(f"[5/5] quantizing to {names}, each gated on parity and on its held-out reading")
    rows = quantize_and_compare(bundle.path, held_out, parity_images, runtime_right, plan.variants, echo)
    echo(f"checkpoint: {ckpt.path}")
    echo(f"bundle: {bundle.path}")
    echo(f"done in {time.perf_counter() - t0:.0f} s")
    return {"right": right, "runtime_right": runtime_right, "identical": same, "total": len(pairs),
            "seconds": time.perf_counter() - t0, "summary": summary, "parity": parity.to_dict(), "variants": rows}


MAX_READING_DROP = 2.0  # points of held-out reading a quantized variant may lose against fp32


def quantize_and_compare(bundle_path: Path, held_out, parity_images, fp32_right: int, variants, echo) -> dict:
    """Add the fp16 and int8-cpu variants (each must read the held-out images within
    MAX_READING_DROP points of fp32) and print held-out accuracy and encoder latency side by side."""
    from pixdeploy.export.parity import Check, ParityError
    from pixdeploy.export.quantize import choose_variant, quantize_bundle
    from pixdeploy.runtime import Pipeline

    images = [ex.segments[0] for ex in held_out]
    truth = [ex.texts[0].strip() for ex in held_out]
    fp32_pct = 100 * fp32_right / len(truth)
    with Pipeline.load(bundle_path, device="cpu") as fp32:
        rows = {"fp32": {"right_pct": fp32_pct, "encoder_ms": encoder_ms(fp32, images),
                         "decode_tokens_per_s": decode_tokens_per_s(fp32, images)}}

    def reading(name):
        def check(pipe) -> list:
            read = pipe.generate_batch(images, max_new_tokens=8)
            pct = 100 * sum(r.strip() == t for r, t in zip(read, truth)) / len(truth)
            rows[name] = {"right_pct": pct, "encoder_ms": encoder_ms(pipe, images),
                          "decode_tokens_per_s": decode_tokens_per_s(pipe, images)}
            return [Check("heldout_drop_points", fp32_pct - pct, MAX_READING_DROP, False)]
        return check

    for precision, target in variants:
        name = choose_variant(precision, target).name
        try:
            quantize_bundle(bundle_path, precision, target, parity_images=parity_images,
                            extra_checks=reading(name), echo=lambda *_: None)
        except ParityError as e:  # the gate did its job: the variant is not added; the demo shows why
            rows.setdefault(name, {})["refused"] = str(e).split(";")[0]
    echo(f"      {'variant':<10}{'held-out read':>15}{'encoder ms (batch 16)':>24}{'decode tokens/s (batch 1)':>28}")
    for name, r in rows.items():
        if "refused" in r:
            echo(f"      {name:<10} not added: {r['refused']}")
        else:
            echo(f"      {name:<10}{r['right_pct']:>14.1f}%{r['encoder_ms']:>24.1f}{r['decode_tokens_per_s']:>28.0f}")
    kept = {n: r for n, r in rows.items() if "refused" not in r and n != "fp16"}
    fastest = max(kept, key=lambda n: kept[n]["decode_tokens_per_s"])
    echo(f"      fastest CPU decode: {fastest}, {kept[fastest]['decode_tokens_per_s']:.0f} tokens/s, reading "
         f"{kept[fastest]['right_pct']:.1f}% of the held-out images")
    echo("      (fp16 is for GPUs: onnxruntime's CPU kernels emulate it; its CPU time is not its speed)")
    return rows


def decode_tokens_per_s(pipe, images, steps: int = 32, repeats: int = 3) -> float:
    """Greedy decode steps per second at batch 1 after one image's prompt (demo display only; speed claims come
    from benchmarks/): a run of ``steps`` tokens less a run of one, so the encoder and the prefill cancel."""
    from pixdeploy.runtime.sampling import Sampling

    emb, ids = pipe.embed(images[:1]), pipe.prompt_ids()
    steps = min(steps, pipe.cfg.max_seq_len - len(ids) - 1)

    def run(n: int) -> float:
        t = time.perf_counter()
        for _ in pipe.decode_steps(emb, ids, Sampling(max_new_tokens=n, stop=None)):
            pass
        return time.perf_counter() - t

    per_token = sorted(run(steps + 1) - run(1) for _ in range(repeats))[repeats // 2] / steps
    return 1 / max(per_token, 1e-9)


def encoder_ms(pipe, images, repeats: int = 5) -> float:
    """Median wall time of the image encoder on one batch of 16 letterboxed images (demo display only;
    speed claims come from benchmarks/)."""
    rgb, sizes = pipe.preprocess(images[:16])
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        pipe.embed_letterboxed(rgb, sizes)
        times.append(time.perf_counter() - t)
    return 1e3 * sorted(times)[len(times) // 2]


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
