"""flops.py and bench.py: FLOP / byte / parameter counts against hand values and brute force, the memory plan's
arithmetic, and the tiny CPU run printing its table. No timing assertions."""
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from scripts import flops
from model import build_tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config():
    """Made-up shapes small enough to count by hand (head_dim 8, vision window of 2x2 merged tokens)."""
    text = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=1,
                num_key_value_heads=1, bos_token_id=0, eos_token_id=1, pad_token_id=0,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 1, 1]})
    vision = dict(depth=2, hidden_size=4, intermediate_size=6, num_heads=1, patch_size=2, temporal_patch_size=2,
                  spatial_merge_size=2, window_size=8, fullatt_block_indexes=[1], out_hidden_size=8)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=5, video_token_id=6,
                            vision_start_token_id=7, vision_end_token_id=8, bos_token_id=0, eos_token_id=1,
                            pad_token_id=0)


def brute_force(model):
    return sum(p.numel() for p in model.parameters())


def test_param_counts_hand_and_brute_force():
    cfg = small_config()
    # q 8x8, k 8x8, v 8x8, o 8x8, gate/up/down 8x16: 64 + 128 + 64 + 384
    assert flops.lm_layer_matmul_params(cfg.text_config) == 640
    counts = flops.param_counts(cfg)
    # layer: 640 + q/k/v biases 24 + two norms 16 = 680; two layers + final norm 8
    # vision: patch embed 3*2*2*2*4 = 96, block 136 + biases 32 + norms 8 = 176 (x2), merger ln 4,
    # mlp 16*16+16 and 16*8+8
    assert counts == {"embed": 80, "lm_layers": 1368, "lm_head": 80, "vision": 860, "total": 2388}
    torch.manual_seed(0)
    assert brute_force(Qwen2_5_VLForConditionalGeneration(cfg)) == counts["total"]
    tiny, _ = build_tiny()
    assert brute_force(tiny) == flops.param_counts(tiny.config)["total"]
    assert brute_force(tiny.model.visual) == flops.param_counts(tiny.config)["vision"]


@pytest.mark.parametrize("size,published", [("3b", 3.75e9), ("7b", 8.29e9)])
def test_published_sizes_on_meta_device(size, published):
    cfg = flops.qwen25vl_config(size)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    counts = flops.param_counts(cfg)
    assert brute_force(model) == counts["total"]
    assert abs(counts["total"] - published) / published < 0.005
    assert (counts["lm_head"] == 0) == (size == "3b")  # 3B ties lm_head to the embedding


def test_lm_flops_hand_values():
    cfg = small_config()
    # 3 tokens: 2 layers * 2*640*3 matmuls + 4 * 2 layers * 8 * (1+2+3) causal pairs + one logit 2*8*10
    assert flops.lm_forward_flops(cfg, 3, 1) == 7680 + 384 + 160
    # one token after 2 cached: sees 3 keys
    assert flops.lm_forward_flops(cfg, 1, 1, past=2) == 2560 + 4 * 2 * 8 * 3 + 160
    # prefill of P then decode steps = one forward over P+T (logits aside): the attention pairs add up
    assert (flops.lm_forward_flops(cfg, 5, 0) + sum(flops.lm_forward_flops(cfg, 1, 0, past=p) for p in range(5, 9))
            == flops.lm_forward_flops(cfg, 9, 0))


def test_vision_flops_hand_values():
    cfg = small_config()
    # grid t=2, h=6, w=4 patches: 48 patches, 12 merged; merged grid 3x2 in windows of 2x2 merged
    # -> windows of 16 and 8 patches per frame; full attention over 24 patches per frame
    windows, frames = flops.vision_windows(cfg.vision_config, 2, 6, 4)
    assert sorted(windows) == [8, 8, 16, 16] and frames == [24, 24]
    matmul = 2 * (96 + 2 * 136) * 48 + 2 * (16 * 16 + 16 * 8) * 12
    attn = 4 * 4 * (1 * 2 * 24 ** 2 + 1 * 2 * (16 ** 2 + 8 ** 2))  # one full layer, one window layer
    assert flops.vision_forward_flops(cfg, [(2, 6, 4)]) == matmul + attn == 73216


@pytest.mark.parametrize("grid", [(8, 18, 18), (2, 8, 12), (1, 10, 6)])
def test_vision_windows_match_transformers(grid):
    from transformers.vision_utils import get_vision_window_index
    v = flops.qwen25vl_config("7b").vision_config
    _, cu = get_vision_window_index(torch.tensor([grid]), v.spatial_merge_size, v.window_size, v.patch_size)
    lengths = (cu[1:] - cu[:-1]).tolist()
    theirs = sorted(n for n in lengths if n > 0)  # in patches; empty padding windows dropped
    assert sorted(flops.vision_windows(v, *grid)[0]) == theirs


def test_video_tokens_of_16_frames_252():
    v = flops.qwen25vl_config("7b").vision_config
    assert flops.video_grid(v, 16, 252) == (8, 18, 18)  # 8 * 9 * 9 = 648 video tokens
    with pytest.raises(SystemExit, match="multiple of 28"):
        flops.video_grid(v, 16, 250)


def test_phase_flops_and_decode_bytes():
    cfg = small_config()
    f = flops.phase_flops(cfg, 2, 3, 3, (2, 6, 4))
    vis = 2 * 73216
    lm = 2 * flops.lm_forward_flops(cfg, 6, 3)
    assert f["logprob"] == lm + vis and f["train"] == 3 * lm + vis
    assert f["train_hardware_with_recompute"] == f["train"] + lm - 2 * 2 * 8 * 10 * 3  # lm_head not recomputed
    assert f["generate"] == f["prefill"] + f["decode"]
    shared = flops.phase_flops(cfg, 2, 3, 3, (2, 6, 4), n_videos=1)  # both answers share one video
    assert shared["vision"] == 73216 and shared["train"] == f["train"] - 73216
    # weights (1368 + lm_head 80) * 2 bytes per step, KV 2*2 layers*1 head*8*2 bytes = 64 per token per
    # answer; two decode steps see 4 and 5 cached tokens
    assert flops.decode_bytes(cfg, 2, 3, 3, 2) == 2 * 2896 + 2 * 64 * (4 + 5)


def test_memory_plan_sums_and_sharding():
    cfg = flops.qwen25vl_config("7b")
    p8, p2 = flops.memory_plan(cfg, 8), flops.memory_plan(cfg, 2)
    for p in (p8, p2):
        assert p["update"] == pytest.approx(sum(u for u, _ in p["parts"].values()))
        assert p["rollout"] == pytest.approx(sum(r for _, r in p["parts"].values()))
        assert p["peak"] == max(p["update"], p["rollout"])
    assert len(p8["sharded"]) == 4
    for name, (u, r) in p8["parts"].items():
        scale = 4 if name in p8["sharded"] else 1
        assert p2["parts"][name][0] == pytest.approx(scale * u) and p2["parts"][name][1] == pytest.approx(scale * r)
    counts = flops.param_counts(cfg)
    trainable = counts["total"] - counts["vision"]
    # fp32 master: 4 (params) + 4 (grads) + 8 (AdamW) bytes per trainable param over 8 GPUs
    sharded = sum(p8["parts"][k][0] for k in p8["sharded"] if "reference" not in k)
    assert sharded == pytest.approx((4 * counts["total"] + 12 * trainable) / 8)
    rep = flops.memory_plan(cfg, 8, reference="replicated")
    assert rep["update"] - p8["update"] == pytest.approx(2 * counts["total"] * (1 - 1 / 8))
    assert flops.memory_plan(cfg, 8, reference="none")["update"] < p8["update"]


def test_tiny_bench_prints_table(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "scripts/bench.py", "--size=tiny", "--batch_size=1", "--group_size=2", "--num_frames=4",
           "--frame_size=56", "--prompt_len=8", "--gen_len=4", "--warmup=0", "--repeats=1",
           "--dtype=bfloat16", "--gradient_checkpointing=True", f"--json={out}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    header = next(l for l in lines if l.startswith("| phase"))
    for col in ("time s", "tokens/s", "TFLOP/s", "MFU", "BW GB/s", "BW use", "peak mem GB"):
        assert col in header
    phases = [l.split("|")[1].strip() for l in lines if l.startswith("| ") and not l.startswith("| phase")]
    assert phases == ["generate", "prefill", "decode", "vision", "logprob", "train"]
    data = json.loads(out.read_text())
    assert data["answers"] == 2 and data["gradient_checkpointing"] is True
    assert data["phases"]["decode"]["bytes"] > 0 and data["phases"]["train"]["flops"] > 0
    assert data["phases"]["train"]["hfu"] > data["phases"]["train"]["mfu"]
    assert data["prompt_len_total"] == 8 + 2 + 2 * 2 * 2  # text + start/end + (2 x 4 x 4) / 4 video tokens


@pytest.mark.parametrize("seq_len", [5, 9])
def test_lm_flops_match_torch_flop_counter(seq_len):
    """Independent check: torch's FlopCounterMode over a real forward. Eager attention computes all
    S^2 (query, key) pairs, where lm_forward_flops counts the causal half, so that term is swapped."""
    from torch.utils.flop_counter import FlopCounterMode
    cfg = small_config()
    model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation="eager")
    ids = torch.tensor([[2, 3, 4, 9] * 3])[:, :seq_len]  # clear of the special ids 5-8
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, logits_to_keep=1)
    text = cfg.text_config
    attention = 4 * text.num_hidden_layers * text.num_attention_heads * flops.head_dim(text)
    causal, full = flops.causal_pairs(0, seq_len), seq_len * seq_len
    ours = flops.lm_forward_flops(cfg, seq_len, 1)
    assert counter.get_total_flops() == ours - attention * causal + attention * full


def test_vision_flops_match_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode
    cfg = small_config()
    model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation="eager")
    grids = [(2, 6, 4), (2, 10, 6)]
    pixels = torch.randn(sum(t * h * w for t, h, w in grids), 3 * 2 * 2 * 2)
    with FlopCounterMode(display=False) as counter:
        model.model.visual(pixels, grid_thw=torch.tensor(grids))
    assert counter.get_total_flops() == flops.vision_forward_flops(cfg, grids)


def test_bench_phases_option(tmp_path):
    base = [sys.executable, "scripts/bench.py", "--size=tiny", "--batch_size=1", "--group_size=2", "--num_frames=4",
            "--frame_size=56", "--prompt_len=8", "--gen_len=4", "--warmup=0", "--repeats=1"]
    res = subprocess.run(base + ["--phases=logprob,train"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [l.split("|")[1].strip() for l in res.stdout.splitlines() if l.startswith("| ") and "phase" not in l]
    assert rows == ["vision", "logprob", "train"]
    bad = subprocess.run(base + ["--phases=train,decode"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "phases" in bad.stderr and "decode" in bad.stderr


def test_forward_tokens_hand_values():
    from scripts import bench_step
    prompts, answers = [10, 10, 12, 12], [5, 1, 2, 7]
    # one padded forward per micro-batch of 2: (10 + 5) * 2 + (12 + 7) * 2
    assert bench_step.forward_tokens(prompts, answers, 2, 0) == 68
    # one row per forward: exactly the real tokens
    assert bench_step.forward_tokens(prompts, answers, 2, 1) == sum(prompts) + sum(answers) == 59
    # micro-batch of 4, forwards of 2 sorted by length 11, 14 | 15, 19: 2 * (12 + 2) + 2 * (12 + 7)
    assert bench_step.forward_tokens(prompts, answers, 4, 2) == 66
    assert bench_step.forward_tokens([10, 10, 10, 10], [1, 9, 2, 8], 4, 2) == 2 * 12 + 2 * 19


def test_bench_step_phase(tmp_path):
    out = tmp_path / "step.json"
    cmd = [sys.executable, "scripts/bench.py", "--size=tiny", "--phases=step", "--batch_size=2", "--group_size=2",
           "--num_frames=4", "--frame_size=56", "--prompt_len=8", "--gen_len=10", "--min_gen_len=2",
           "--rows_per_forward=1", "--warmup=0", "--repeats=1", f"--json={out}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    parts = [l.split("|")[1].strip() for l in res.stdout.splitlines() if l.startswith("| ") and "part" not in l]
    assert parts == ["rollout", "reference", "update", "step"]
    data = json.loads(out.read_text())
    assert data["answers"] == 4 and 2 <= data["answer_len_mean"] <= 10
    step = data["parts"]["step"]
    assert step["time_s"] == pytest.approx(sum(data["parts"][k]["time_s"] for k in ("rollout", "reference", "update")))
    assert step["flops"] == sum(data["parts"][k]["flops"] for k in ("rollout", "reference", "update"))
    assert data["parts"]["update"]["flops"] > 2 * data["parts"]["reference"]["flops"]  # 2 passes x 3 forwards
    assert data["padded_over_real"]["as_run"] == 1.0  # one answer per forward: no padding at all
    assert data["padded_over_real"]["one_padded_forward_per_micro_batch"] >= 1.0
    assert 0 < data["tokens_per_s_7b_equivalent"] < data["tokens_per_s"]


def test_memory_plan_counts_packed_groups_and_checkpointing():
    cfg = flops.qwen25vl_config("7b")
    packed = flops.memory_plan(cfg, 8, micro_batch=8, checkpointing=False)
    unpacked = flops.memory_plan(cfg, 8, micro_batch=8, checkpointing=False, group_size=0)
    s = packed["shape"]
    assert s["tokens"] == s["prompt_len"] + 8 * s["gen_len"]               # the prompt once, 8 answers after it
    assert unpacked["shape"]["tokens"] == 8 * s["seq_len"]
    t = cfg.text_config
    per_token = t.num_hidden_layers * (6 * t.hidden_size + 2 * 512 + 4 * t.intermediate_size) * 2   # kv = 4 x 128
    assert packed["parts"]["activations: all layers"][0] == pytest.approx(s["tokens"] * per_token)
    ckpt = flops.memory_plan(cfg, 8, micro_batch=8)
    assert "activations: one layer recomputed + grads" not in packed["parts"]
    assert ckpt["parts"]["activations: layer inputs"][0] == pytest.approx(t.num_hidden_layers * s["tokens"] * t.hidden_size * 2)
    assert ckpt["update"] < packed["update"] < unpacked["update"]
