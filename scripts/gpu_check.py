"""
Every GPU check in one command: the fast sampler's correctness on CUDA, the embedded default trained
there, and the speed targets. One line per check, PASS / FAIL / SKIP with its numbers; on a machine
without CUDA the CUDA-only checks say SKIP and the rest run.

    python scripts/gpu_check.py                          # everything (about 8 minutes on one H100 / H200)
    python scripts/gpu_check.py --parts=correct,train    # a subset: correct | train | evaltime | speed
    python scripts/gpu_check.py --init_from=out/tiny-sft # the tiny SFT policy to use (else one is made)

correct  decode logits against a teacher-forced forward at every step (float32 with TF32 off, and
         bf16), eager / compile / graph / both; greedy fast == hf on the synthetic data, also after the
         kept decoders were dropped and transformers' generate ran in between; a sequence of calls whose
         shapes, sampling settings and weights change, against fresh calls and generate; the closure
         pattern of the first fast sampler, kept as a repro of what went wrong
train    the embedded default in bf16 for `train_steps` steps with each sampler and with compile / graph
         off: first samplings whose every answer fails the format (must be 0), step time, video_wait;
         SFT's evaluation of 200 questions (a fresh process: compile included)
speed    scripts/bench_sampler.py at the 3B and 7B shapes (decode step against the bandwidth floor,
         first call of a shape apart), bench.py --phases=step at the 3B shape after warm-up
The results also go to --json (default out/gpu_check/results.json).
"""
import json as jsonlib
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from machinery import sampler                                                       # noqa: E402
from machinery.configurator import configure                                   # noqa: E402

# -----------------------------------------------------------------------------
parts = "correct,train,speed"
init_from = ""                # the tiny SFT policy; "" = make one (prepare.py + sft.py, 300 steps)
data = "data/synthetic"       # the synthetic benchmark's folder (made by prepare.py when missing)
out_dir = "out/gpu_check"
json = ""                     # default: <out_dir>/results.json
train_steps = 20
peak_bandwidth_gbs = 0.0      # 0: measured with a device copy (CUDA)
speed_gen_len = 128           # bench_sampler's new tokens per answer
step_gen_len = 768            # bench.py --phases=step: new tokens (answers cut uniformly in [100, this])
# -----------------------------------------------------------------------------
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
MODES = {"eager": (False, False), "compile": (True, False), "graph": (False, True), "compile+graph": (True, True)}
results = []


def report(name, ok, **numbers):
    """One line: PASS / FAIL / SKIP name: numbers (ok None = skipped, with numbers['why'])."""
    status = "SKIP" if ok is None else "PASS" if ok else "FAIL"
    text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items())
    print(f"{status} {name}: {text}", flush=True)
    results.append({"check": name, "status": status, **numbers})


def guarded(name, fn):
    """Run one check; an exception is that check's FAIL, not the end of the run."""
    t0 = time.time()
    try:
        fn()
    except Exception as e:                                          # noqa: BLE001 - reported, then go on
        report(name, False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
    print(f"   ({name}: {time.time() - t0:.1f} s)", flush=True)


def modes_here():
    return [m for m in MODES if CUDA or m == "eager"]


def skip_cuda_modes(name):
    for m in MODES:
        if m not in modes_here():
            report(f"{name} [{m}]", None, why="needs CUDA")


# ----------------------------------------------------------------------------- correct

def tiny_prompts(processor, seed=0):
    """Three left-padded prompts of different lengths, random videos (one of another size)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    questions = ["Which way?", "How many circles appear in the whole video clip, and which one comes first?",
                 "Red square moves left"]
    videos = [rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8) for t, h, w in [(8, 112, 112), (6, 168, 112),
                                                                               (8, 112, 112)]]
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q}]}],
                                           add_generation_prompt=True, tokenize=False) for q in questions]
    meta = [{"total_num_frames": len(v), "fps": 2.0} for v in videos]
    batch = processor(text=texts, videos=videos, video_metadata=meta, return_tensors="pt", padding=True,
                      padding_side="left", do_sample_frames=False)
    return {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in dict(batch).items()}


def check_decode_logits(dtype, tol):
    """Each step's logits (sampled rows, temperature 0.7, top-p 0.8) against a teacher-forced forward."""
    from model import build_tiny, vision_token_ids
    from rollout import repeat_batch
    model, processor = build_tiny(texts=["The red square moves left. How many circles appear?"] * 10, seed=0)
    model = model.to(DEVICE, getattr(torch, dtype)).eval()
    pad, suppress = processor.tokenizer.pad_token_id, vision_token_ids(processor)
    prompt = tiny_prompts(processor)
    name = f"decode logits = teacher-forced forward, {dtype}"
    for mode in modes_here():
        c, g = MODES[mode]
        worst, steps = 0.0, 0
        for call in range(3):                        # reused decoders: the 2nd and 3rd calls replay
            gen = torch.Generator(DEVICE).manual_seed(call)
            out, logits = sampler.sample(model, prompt, 3, 12, None, pad, suppress, temperature=0.7, top_p=0.8,
                                         keep_logits=True, generator=gen, compile=c, graph=g)
            ours = torch.stack(logits, 1)
            theirs = sampler.teacher_forced_logits(model, repeat_batch(prompt, 3), out)
            worst = max(worst, float((ours - theirs).abs().max()))
            steps += out.shape[1]
        report(f"{name} [{mode}]", worst <= tol, max_abs_diff=worst, tolerance=tol, steps=steps)
    skip_cuda_modes(name)


def synthetic_batch(n, split="val"):
    from machinery.dataset import load_records, load_samples
    records = load_records(os.path.join(data, f"{split}.jsonl"))[:n]
    return load_samples(records, num_frames=8, max_pixels=112 * 112, log=lambda *a, **k: None)


def check_greedy_fast_equals_hf(policy_dir):
    """float32, TF32 off: fast == hf token for token on 64 validation questions, then again after the kept
    decoders were dropped and generate ran in between (the order in which the first sampler failed)."""
    from model import load_policy
    from rollout import generate_rollout
    model, processor = load_policy(policy_dir, dtype=torch.float32, device=DEVICE)
    model.eval()
    samples = synthetic_batch(64)
    frames = [s["frames"] for s in samples]
    for mode in modes_here():
        c, g = MODES[mode]
        model.__dict__.pop("_decoders", None)
        run = lambda name: generate_rollout(model, processor, samples, frames, 1, max_new_tokens=48, greedy=True,
                                            sampler=name, decode_compile=c, decode_graph=g)
        fast1, hf = run("fast"), run("hf")
        model.__dict__.pop("_decoders", None)
        hf2 = run("hf")
        fast2, fast3 = run("fast"), run("fast")
        same = [a.texts == hf.texts for a in (fast1, fast2, fast3)] + [hf2.texts == hf.texts]
        differing = sum(a != b for r in (fast1, fast2, fast3) for a, b in zip(r.texts, hf.texts))
        report(f"greedy fast == hf, float32, 64 questions [{mode}]", all(same), differing_answers=differing,
               accuracy_fast=float(fast3.accuracy.mean()), accuracy_hf=float(hf.accuracy.mean()))
    skip_cuda_modes("greedy fast == hf, float32, 64 questions")


def check_call_sequence(policy_dir):
    """Calls whose prompts, group size, sampling settings and weights change, each against a fresh call
    (decoders dropped first, same noise) and, when greedy, against transformers' generate."""
    from model import load_policy
    from rollout import generate_rollout
    model, processor = load_policy(policy_dir, dtype=torch.float32, device=DEVICE)
    model.eval()
    samples = synthetic_batch(24, "train")
    calls = [(8, 8, dict(temperature=1.0)), (2, 8, dict(greedy=True)), (8, 8, dict(temperature=1.0)),
             (3, 4, dict(temperature=0.7, top_p=0.9)), ("perturb", None, None), (8, 8, dict(temperature=1.0)),
             (5, 1, dict(greedy=True)), (2, 8, dict(greedy=True)), (8, 8, dict(temperature=1.0))]
    for mode in modes_here():
        c, g = MODES[mode]
        model.__dict__.pop("_decoders", None)
        mismatches, generate_mismatches, n_calls, start = 0, 0, 0, 0
        for B, G, kw in calls:
            if B == "perturb":                       # the optimizer moved the weights
                with torch.no_grad():
                    for p in model.model.language_model.parameters():
                        p.add_(torch.randn_like(p) * 1e-3)
                continue
            batch = samples[start:start + B]
            start = (start + B) % 16
            frames = [s["frames"] for s in batch]

            def run(name):
                torch.manual_seed(n_calls)
                if CUDA:
                    torch.cuda.manual_seed(n_calls)
                return generate_rollout(model, processor, batch, frames, G, max_new_tokens=32, sampler=name,
                                        decode_compile=c, decode_graph=g, **kw)
            kept = run("fast")
            saved = model.__dict__.pop("_decoders", None)
            fresh = run("fast")
            model.__dict__["_decoders"] = saved
            mismatches += kept.texts != fresh.texts
            if kw.get("greedy"):
                generate_mismatches += kept.texts != run("hf").texts
            n_calls += 1
        report(f"call sequence: kept == fresh == generate [{mode}]", mismatches == 0 and generate_mismatches == 0,
               calls=n_calls, kept_vs_fresh_mismatches=mismatches, greedy_vs_generate_mismatches=generate_mismatches)
    skip_cuda_modes("call sequence: kept == fresh == generate")


def check_closure_repro():
    """The first fast sampler's pattern, alone: a step closing over dicts of tensors, compiled once, then
    its tensors re-created per shape (dropped first) and the step captured again. Each capture's replay
    is compared with the same step run eagerly on the same tensors. Diagnosis only: no PASS needed."""
    if not CUDA:
        return report("closure repro (diagnosis)", None, why="needs CUDA")

    def body(w, s):
        h = s["x"]
        for layer in w["layers"]:
            h = torch.tanh(h @ layer["a"] + layer["b"])
        s["cache"].index_copy_(1, s["slot"], h[:, None])
        s["out"].copy_((s["cache"] * s["valid"][:, :, None]).sum(1))

    wrong = 0
    for i in range(8):
        N, C = (64, 256) if i % 2 == 0 else (16, 384)
        g = torch.Generator(DEVICE).manual_seed(i)
        w = {"layers": [{"a": torch.randn(32, 32, device=DEVICE, generator=g) / 6,
                         "b": torch.randn(32, device=DEVICE, generator=g)} for _ in range(4)]}
        s = {"x": torch.randn(N, 32, device=DEVICE, generator=g), "cache": torch.zeros(N, C, 32, device=DEVICE),
             "valid": torch.ones(N, C, device=DEVICE), "slot": torch.tensor([3], device=DEVICE),
             "out": torch.zeros(N, 32, device=DEVICE)}
        replay = old_captured(lambda: body(w, s))
        replay()
        got = s["out"].clone()
        s["cache"].zero_()
        body(w, s)
        wrong += not torch.allclose(got, s["out"], atol=1e-4)
        del w, s, replay
    report("closure repro (diagnosis)", True, captures=8, captures_reading_other_memory=wrong)


def old_captured(step):
    """How the first fast sampler captured its step: torch.compile of the closure, warm-up, one capture."""
    return sampler.captured(torch.compile(step), warmup=3)


def part_correct(policy_dir):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    guarded("decode logits float32", lambda: check_decode_logits("float32", 1e-4))
    if CUDA:
        guarded("decode logits bf16", lambda: check_decode_logits("bfloat16", 0.125))
    else:
        report("decode logits = teacher-forced forward, bfloat16", None, why="needs CUDA (bf16 matmuls on CPU differ)")
    guarded("greedy fast == hf", lambda: check_greedy_fast_equals_hf(policy_dir))
    guarded("call sequence", lambda: check_call_sequence(policy_dir))
    guarded("closure repro", check_closure_repro)


# ----------------------------------------------------------------------------- train

def run(args, log_path, timeout=600):
    """A project script as a user runs it; (exit code, seconds). Its output goes to log_path."""
    t0 = time.time()
    with open(log_path, "w") as log:
        code = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              timeout=timeout).returncode
    return code, time.time() - t0


def tail(path, n=3):
    return " | ".join(open(path).read().strip().splitlines()[-n:])[-400:]


def start_train(policy_dir, name, extra):
    """train.py on the embedded default (bf16 on CUDA), started in the background: (name, process, run dir)."""
    run_dir = os.path.join(out_dir, "train_" + name.replace(", ", "_").replace(" ", "_"))
    subprocess.run(["rm", "-rf", run_dir])
    log = open(run_dir + ".log", "w")
    proc = subprocess.Popen([sys.executable, "train.py", f"--init_from={policy_dir}", f"--max_steps={train_steps}",
                             f"--train_data={data}/train.jsonl", f"--val_data={data}/val.jsonl",
                             "--eval_interval=0", "--eval_samples=64", f"--checkpoint_interval={train_steps}",
                             f"--out_dir={run_dir}", *extra], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return name, proc, run_dir, time.time()


def finish_train(name, proc, run_dir, t0, together):
    """The run's first samplings whose every answer failed the format (must be none), and its times."""
    code = proc.wait(timeout=900)
    check = f"train {train_steps} steps [{name}]"
    if code != 0:
        return report(check, False, exit_code=code, log=tail(run_dir + ".log"))
    rows = [jsonlib.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]
    failing = [r["step"] for r in rows if r["format_sampled"] == 0]
    mean = lambda k: sum(r[k] for r in rows) / len(rows)
    report(check, not failing, first_samplings_all_format_fail=len(failing), failing_steps=failing,
           groups_all_format_fail=int(sum(r["format_failed_groups"] for r in rows)), reward=mean("reward"),
           format_sampled=mean("format_sampled"), completion_len=mean("completion_len"), step_s=mean("step_time"),
           rollout_s=mean("rollout_time"), video_wait_s=mean("video_wait"), wall_s=time.time() - t0,
           runs_at_once=together)


def check_sft_eval_time(policy_dir, decode_compile=None):
    """sft.py's evaluation (200 questions, greedy, 48 tokens, autocast as sft.py runs it) in a fresh process."""
    code = ("import json, time, torch, sys\n"
            "from machinery.dataset import load_records, load_samples\nfrom eval import evaluate\nfrom model import load_policy\n"
            "from machinery.distributed import autocast\nfrom types import SimpleNamespace as NS\n"
            f"m, p = load_policy({policy_dir!r}, device={DEVICE!r})\n"
            f"val = load_samples(load_records({os.path.join(data, 'val.jsonl')!r})[:200], log=lambda *a, **k: None)\n"
            f"dtype = 'bfloat16' if {CUDA} else 'float32'\n"
            f"ctx = autocast(NS(dtype=dtype, master_dtype='float32', distributed='ddp', device={DEVICE!r}))\n"
            "t0 = time.time()\nwith ctx:\n"
            f"    r = evaluate(m.eval(), p, val, max_new_tokens=48, decode_compile={decode_compile})\n"
            "if torch.cuda.is_available(): torch.cuda.synchronize()\n"
            "print(json.dumps({'seconds': time.time() - t0, 'accuracy': r['all']['accuracy']}))\n")
    log_path = os.path.join(out_dir, "sft_eval.log")
    exit_code, _ = run(["-c", code], log_path)
    if exit_code != 0:
        return report("SFT evaluation of 200 questions", False, exit_code=exit_code, log=tail(log_path))
    r = jsonlib.loads(open(log_path).read().strip().splitlines()[-1])
    name = "SFT evaluation of 200 questions, fresh process" + ("" if decode_compile is None else ", compiled")
    report(name, (r["seconds"] <= 10 or decode_compile is not None) if CUDA else None,
           seconds=r["seconds"], accuracy=r["accuracy"], target_s=10, **({} if CUDA else {"why": "target is for CUDA"}))


def start_part_train(policy_dir):
    """Every variant at once (one GPU holds them all; their step times are then not each alone's)."""
    variants = {"fast": [], "hf": ["--sampler=hf"]}
    if CUDA:
        variants.update({"fast, compiled": ["--decode_compile=True"], "fast, graph off": ["--decode_graph=False"],
                         "fast, eager": ["--decode_graph=False", "--decode_compile=False"]})
    return [start_train(policy_dir, name, extra) for name, extra in variants.items()]


def finish_part_train(policy_dir, runs):
    for run_ in runs:
        guarded(f"train [{run_[0]}]", lambda: finish_train(*run_, together=len(runs)))
    if torch.cuda.device_count() > 1:
        guarded("train fsdp", lambda: check_torchrun_fsdp(policy_dir))
    else:
        report("train under torchrun + FSDP2 on nccl", None, why=f"{torch.cuda.device_count()} GPU(s) here, needs 2+")


def check_torchrun_fsdp(policy_dir):
    n = torch.cuda.device_count()
    run_dir = os.path.join(out_dir, "train_fsdp")
    subprocess.run(["rm", "-rf", run_dir])
    log_path = run_dir + ".log"
    t0 = time.time()
    with open(log_path, "w") as log:
        code = subprocess.run(["torchrun", "--standalone", f"--nproc_per_node={n}", "train.py", "--distributed=fsdp",
                               f"--init_from={policy_dir}", f"--max_steps={train_steps}", "--eval_interval=0",
                               f"--train_data={data}/train.jsonl", f"--val_data={data}/val.jsonl",
                               "--eval_samples=64", f"--out_dir={run_dir}"], cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT, timeout=600).returncode
    if code != 0:
        return report(f"train under torchrun + FSDP2, {n} GPUs", False, exit_code=code, log=tail(log_path))
    rows = [jsonlib.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]
    failing = [r["step"] for r in rows if r["format_sampled"] == 0]
    report(f"train under torchrun + FSDP2, {n} GPUs", not failing, first_samplings_all_format_fail=len(failing),
           wall_s=time.time() - t0)


# ----------------------------------------------------------------------------- speed

def measured_bandwidth_gbs():
    """Device copy bandwidth: read + write of a 2 GiB buffer, best of 10."""
    x = torch.empty(2 ** 29, dtype=torch.float32, device=DEVICE)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(10):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        y.copy_(x)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * x.numel() * 4 / best / 1e9


def check_bench_sampler(size, target, peak_bw):
    path = os.path.join(out_dir, f"bench_sampler_{size}.json")
    code, _ = run(["scripts/bench_sampler.py", f"--size={size}", "--device=cuda", "--dtype=bfloat16", "--batch_size=8",
                   "--group_size=8", "--num_frames=16", "--frame_size=252", "--prompt_len=200",
                   f"--gen_len={speed_gen_len}", f"--peak_bandwidth_gbs={peak_bw}", "--warmup=2", f"--json={path}"],
                  path + ".log")
    if code != 0:
        return report(f"decode {size}", False, exit_code=code, log=tail(path + ".log"))
    rows = jsonlib.load(open(path))["samplers"]
    fast, hf = rows["fast"], rows["hf"]
    report(f"decode at batch 64, {size} shape", fast["bandwidth_use"] >= target and fast["compile_capture_s"] <= 15,
           fast_step_ms=fast["step_ms"], hf_step_ms=hf["step_ms"], of_floor=fast["bandwidth_use"], target=target,
           first_call_extra_s=fast["compile_capture_s"], rollout_x=hf["rollout_s"] / fast["rollout_s"],
           peak_bw_gbs=peak_bw)


def check_bench_step(peak_bw):
    path = os.path.join(out_dir, "bench_step_3b.json")
    code, _ = run(["scripts/bench.py", "--phases=step", "--size=3b", "--device=cuda", "--dtype=bfloat16", "--batch_size=8",
                   "--group_size=8", "--num_frames=16", "--frame_size=252", "--prompt_len=200",
                   f"--gen_len={step_gen_len}", "--min_gen_len=100", "--reference=True", "--compile=True",
                   "--gradient_checkpointing=False", "--warmup=2", "--repeats=1", "--sampler=fast",
                   f"--peak_bandwidth_gbs={peak_bw}", f"--json={path}"], path + ".log", timeout=900)
    if code != 0:
        return report("whole RL step, 3B shape", False, exit_code=code, log=tail(path + ".log"))
    r = jsonlib.load(open(path))
    parts_ = r["parts"]
    report("whole RL step, 3B shape (64 answers)", parts_["step"]["time_s"] <= 10.8 and r["compile_s_timed"] == 0,
           step_s=parts_["step"]["time_s"], target_s=10.8, rollout_s=parts_["rollout"]["time_s"],
           reference_s=parts_["reference"]["time_s"], update_s=parts_["update"]["time_s"],
           update_mfu=parts_["update"]["mfu"], compile_s_in_timed_step=r["compile_s_timed"],
           compile_s_warmup=r["compile_s_warmup"], peak_mem_gb=max(p["peak_mem_gb"] or 0 for p in parts_.values()))


def part_speed():
    if not CUDA:
        for name in ("decode at batch 64, 3b shape", "decode at batch 64, 7b shape", "whole RL step, 3B shape"):
            report(name, None, why="needs CUDA")
        return
    peak_bw = peak_bandwidth_gbs or measured_bandwidth_gbs()
    print(f"   peak bandwidth {peak_bw:.0f} GB/s ({'given' if peak_bandwidth_gbs else 'measured copy'})")
    guarded("decode 3b", lambda: check_bench_sampler("3b", 0.65, peak_bw))
    guarded("decode 7b", lambda: check_bench_sampler("7b", 0.75, peak_bw))
    guarded("step 3b", lambda: check_bench_step(peak_bw))


# ----------------------------------------------------------------------------- main

def tiny_policy():
    """init_from, or the embedded default's data and a 300-step SFT policy made here."""
    if init_from:
        return init_from
    path = os.path.join(out_dir, "sft")
    if not os.path.exists(os.path.join(data, "val.jsonl")):
        code, seconds = run(["data/synthetic/prepare.py", f"--out={data}"], os.path.join(out_dir, "prepare.log"))
        print(f"   prepare.py: exit {code} in {seconds:.0f} s")
    if not os.path.exists(os.path.join(path, "config.json")):
        code, seconds = run(["sft.py", f"--out_dir={path}", f"--train_data={data}/sft.jsonl",
                             f"--val_data={data}/val.jsonl", "--max_steps=300", "--eval_samples=200"],
                            os.path.join(out_dir, "sft.log"))
        print(f"   sft.py 300 steps: exit {code} in {seconds:.0f} s")
    return path


def main():
    global json
    configure(globals(), sys.argv[1:])
    os.chdir(ROOT)
    os.makedirs(out_dir, exist_ok=True)
    json = json or os.path.join(out_dir, "results.json")
    try:
        import av
        av_version = av.__version__
    except ImportError:
        av_version = "missing (carry its wheel: see the device notes)"
    import transformers
    print(f"gpu_check: torch {torch.__version__}, transformers {transformers.__version__}, av {av_version}, "
          f"device {torch.cuda.get_device_name() if CUDA else 'cpu (CUDA-only checks skipped)'}")
    chosen = parts.split(",")
    policy_dir = tiny_policy() if {"correct", "train", "evaltime"} & set(chosen) else None
    runs = start_part_train(policy_dir) if "train" in chosen else None   # in the background meanwhile
    if "correct" in chosen:
        part_correct(policy_dir)
    if runs is not None:
        finish_part_train(policy_dir, runs)
    if "train" in chosen or "evaltime" in chosen:
        guarded("sft eval time", lambda: check_sft_eval_time(policy_dir))
        if CUDA:
            guarded("sft eval time, compiled", lambda: check_sft_eval_time(policy_dir, decode_compile=True))
    if "speed" in chosen:
        part_speed()
    counts = {s: sum(r["status"] == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    print(f"gpu_check: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    with open(json, "w") as f:
        jsonlib.dump(results, f, indent=1)
    sys.exit(1 if counts["FAIL"] else 0)


if __name__ == "__main__":
    main()
