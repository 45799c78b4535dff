"""
Rollouts: build the chat prompt around a video, sample a group of G answers per prompt, score them.

One training step sees B prompts and G answers per prompt, N = B * G answers in all, the G answers
of one prompt contiguous (the layout `reg_grpo.py` expects). Every tensor a loss needs travels in one
`Rollout`:

    input_ids       (N, P+T)  left-padded prompt, then the right-padded completion
    attention_mask  (N, P+T)
    completion_mask (N, T)    1 on completion tokens up to and including the end-of-turn token
    visual          dict      pixel_values_videos, video_grid_thw, ... repeated once per answer
    accuracy/format (N,)      the two reward terms, logged separately; rewards = accuracy + format

Rewards are plain functions of (completion text, record), in rewards.py.
"""
import functools
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import transformers

from machinery.dataset import format_question
from difficulty import make_easier_prompt
from machinery.logprobs import length_sorted_logps, visual_rows
from model import vision_token_ids
from rewards import score_completions
from machinery.sampler import resolve as resolve_sampler, sample

STILL_SECONDS = 1.0  # seconds per temporal patch told for a clip with no motion in time (one frame)
SYSTEM_PROMPT = (
    "You answer questions about a video. First think about what happens in the video inside "
    "<think> </think>, then give only the final answer inside <answer> </answer>."
)


# ----------------------------------------------------------------------------- prompts

def build_messages(record, hint="", system_prompt=SYSTEM_PROMPT):
    """Chat messages for one record: system instruction, then the video, the record's still image
    when it has one (SEED-Bench-R1's current observation, as the paper feeds it), and the question
    (+ hint)."""
    text = make_easier_prompt(format_question(record), hint)
    image = [{"type": "image"}] if record.get("image") is not None else []
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {"role": "user", "content": [{"type": "video"}, *image, {"type": "text", "text": text}]},
    ]


def encode_prompts(processor, records, videos, hints=None):
    """Tokenise B prompts with their videos into one left-padded batch (the layout generate needs).

    videos: list of (T, H, W, 3) uint8 arrays, one per record, already sampled and resized; each
    record's "times" (T,) are their presentation times in seconds (video.read_video returns both).
    """
    hints = hints or [""] * len(records)
    texts = [processor.apply_chat_template(build_messages(r, h), tokenize=False, add_generation_prompt=True)
             for r, h in zip(records, hints)]
    # Qwen2.5-VL places each temporal patch of frames at tokens_per_second * second_per_grid_ts * k on
    # its 3D rope; the processor sets second_per_grid_ts = temporal_patch_size / fps from this metadata.
    patch = processor.video_processor.temporal_patch_size
    missing = [r.get("id", i) for i, r in enumerate(records) if "times" not in r]
    if missing:
        raise ValueError(f"records {missing[:3]} have frames but no 'times' (seconds): read videos with "
                         f"video.read_video or dataset.load_samples, which return both")
    seconds = [seconds_per_patch(r["times"], patch) for r in records]
    if WHOLE_SECONDS_ONLY:
        seconds = whole_seconds(seconds)
    metadata = [{"total_num_frames": len(v), "fps": patch / s} for v, s in zip(videos, seconds)]
    images = [r["image"] for r in records if r.get("image") is not None]     # (H, W, 3) uint8 each
    batch = processor(text=texts, videos=list(videos), video_metadata=metadata, return_tensors="pt",
                      padding=True, padding_side="left", do_sample_frames=False,
                      **({"images": images} if images else {}))
    return dict(batch)


def prompt_length(processor, sample):
    """Positions of the sample's encoded prompt: the chat text's tokens, with the one placeholder per
    video (image) expanded to ceil(T / t) * (H / p) * (W / p) / m^2 tokens ((H / p) * (W / p) / m^2),
    t the temporal patch, p the patch, m the merge size (the processor's own count, without
    running its pixel pipeline)."""
    text = processor.apply_chat_template(build_messages(sample), tokenize=False, add_generation_prompt=True)
    n = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    vp = processor.video_processor
    T, H, W = sample["frames"].shape[:3]
    n += -(-T // vp.temporal_patch_size) * (H // vp.patch_size) * (W // vp.patch_size) // vp.merge_size ** 2 - 1
    if sample.get("image") is not None:
        ip = processor.image_processor
        h, w = sample["image"].shape[:2]
        n += (h // ip.patch_size) * (w // ip.patch_size) // ip.merge_size ** 2 - 1
    return n


def length_problem(processor, sample, max_positions, answer_tokens, answer="new"):
    """The one length rule of every split (validation, RL training prompts, SFT demonstrations): the
    encoded prompt (text, video and image tokens) plus the answer's tokens (the sampling budget
    max_new_tokens, or an SFT target's length) must fit the model's `max_positions`. The reason a
    sample breaks it, or None.

    A record without decoded "frames" is judged on its question alone (train.py asks before decoding a
    drawn record's video; the chat template puts special tokens on both sides of the question, so its
    tokens are the prompt's own). A question far too long is found without tokenizing it (80 000
    characters take 50 ms to tokenize, too slow for a whole split of them): no token covers more than
    the vocabulary's longest token's bytes, so the prompt has at least bytes(question) / that many."""
    tok = getattr(processor, "tokenizer", processor)
    question = format_question(sample)
    floor = -(-len(question.encode("utf-8")) // longest_token_bytes(tok))
    if "frames" in sample and floor <= max_positions:
        n = prompt_length(processor, sample)
        if n + answer_tokens <= max_positions:
            return None
        return f"prompt of {n} tokens + {answer_tokens} {answer} tokens exceeds the model's {max_positions} positions"
    if floor + answer_tokens <= max_positions and "frames" not in sample:
        floor = len(tok(question, add_special_tokens=False)["input_ids"])
    if floor + answer_tokens <= max_positions:
        return None
    return (f"prompt of at least {floor} tokens (its question alone) + {answer_tokens} {answer} tokens exceeds "
            f"the model's {max_positions} positions")


@functools.lru_cache(maxsize=8)
def longest_token_bytes(tokenizer):
    """The most UTF-8 bytes any token's text takes (byte-level vocabularies write one byte as one or two)."""
    return max(len(t.encode("utf-8")) for t in tokenizer.get_vocab())


def drop_long_prompts(processor, samples, max_positions, max_new_tokens, log=print, skipped=None, answer="new"):
    """The samples that keep the length rule (length_problem); the others are logged ("skip file:LINE
    (id): ...") and counted into `skipped` as "prompt too long". max_new_tokens: the answer's tokens,
    a number, or a function of the sample (an SFT target's length)."""
    kept = []
    for s in samples:
        budget = max_new_tokens(s) if callable(max_new_tokens) else max_new_tokens
        problem = length_problem(processor, s, max_positions, budget, answer)
        if problem is None:
            kept.append(s)
            continue
        log(f"skip {s.get('where', s['id'])} ({s['id']}): {problem}")
        if skipped is not None:
            skipped["prompt too long"] = skipped.get("prompt too long", 0) + 1
    if samples and not kept:
        budget = "its answer" if callable(max_new_tokens) else f"{max_new_tokens} new tokens"
        raise SystemExit(f"{samples[0].get('where', samples[0]['id']).rsplit(':', 1)[0]}: no usable records: "
                         f"every prompt + {budget} exceeds {max_positions} positions")
    return kept


def seconds_per_patch(times, temporal_patch_size=2):
    """The real time between consecutive temporal patches of a clip: from the first frame of the first
    patch to the first frame of the last, over the number of steps. A still (one patch, or every frame
    at one time) gets STILL_SECONDS, which places its patches 1 s apart as if shown at 2 fps."""
    starts = [float(t) for t in times[::temporal_patch_size]]
    if len(starts) < 2 or starts[-1] <= starts[0]:
        return STILL_SECONDS
    return (starts[-1] - starts[0]) / (len(starts) - 1)


def whole_seconds(seconds):
    """transformers before 5.23 casts second_per_grid_ts to an integer in get_rope_index (0.5 s -> 0:
    every temporal patch of the clip at one position); there the nearest whole second, at least 1, is
    told instead, and a warning says so once."""
    rounded = [max(1.0, float(round(s))) for s in seconds]
    global _warned_whole_seconds
    if rounded != seconds and not _warned_whole_seconds:
        _warned_whole_seconds = True
        warnings.warn(f"transformers {transformers.__version__} keeps only whole seconds per temporal patch "
                      f"in Qwen2.5-VL's rope: telling {rounded[:4]} s instead of the true "
                      f"{[round(s, 3) for s in seconds[:4]]} s (5.23 and later take the true value)")
    return rounded


WHOLE_SECONDS_ONLY = tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 23)
_warned_whole_seconds = False


def repeat_batch(batch, repeats):
    """Repeat every prompt of a processor batch `repeats` times, copies contiguous (B -> B*G rows).

    Per-token tensors repeat along dim 0; `pixel_values_videos` is a flat list of patches for all
    videos, so it is cut per video by `video_grid_thw` and each video's patches are repeated.
    """
    out = {}
    for key, value in batch.items():
        if not torch.is_tensor(value):
            out[key] = value
        elif key in ("pixel_values_videos", "pixel_values"):
            grid = batch["video_grid_thw" if key == "pixel_values_videos" else "image_grid_thw"]
            chunks = per_video(value, grid)
            out[key] = torch.cat([c for c in chunks for _ in range(repeats)])
        else:
            out[key] = value.repeat_interleave(repeats, dim=0)
    return out


def per_video(pixel_values, grid_thw):
    """Cut the processor's flat patch list into one chunk per video (or image), by its grid."""
    return pixel_values.split(grid_thw.prod(-1).tolist())


# ----------------------------------------------------------------------------- completions

def reference_completion(record):
    """The answer we teach in the SFT warm start: the record's reasoning, then its answer."""
    return f"<think>{record.get('reasoning') or ''}</think><answer>{record['answer']}</answer>"


# ----------------------------------------------------------------------------- sampling

@dataclass
class Rollout:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    visual: dict
    texts: list
    accuracy: torch.Tensor
    format: torch.Tensor
    ref_logps: torch.Tensor = None

    @property
    def rewards(self):
        return self.accuracy + self.format

    def logp_batch(self):
        """The dict `logprobs.completion_logps` takes."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "completion_mask": self.completion_mask, **self.visual}

    def select(self, rows):
        """The sub-rollout of the given answer rows (a list of indices)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        return Rollout(self.input_ids[idx], self.attention_mask[idx], self.completion_mask[idx],
                       select_visual(self.visual, idx), [self.texts[i] for i in rows],
                       self.accuracy[idx], self.format[idx],
                       None if self.ref_logps is None else self.ref_logps[idx])


def select_visual(visual, idx):
    """Rows `idx` of a per-answer visual dict (one video, and one image or none, per answer)."""
    out = {}
    for key, value in visual.items():
        if key in ("pixel_values_videos", "pixel_values"):
            grid = visual["video_grid_thw" if key == "pixel_values_videos" else "image_grid_thw"]
            out[key] = visual_rows(value, grid, idx)
        else:
            out[key] = value[idx]
    return out


def concat_rollouts(parts):
    """Stack rollouts with possibly different prompt / completion lengths (re-pads both sides)."""
    P = max(r.input_ids.shape[1] - r.completion_mask.shape[1] for r in parts)
    T = max(r.completion_mask.shape[1] for r in parts)
    ids, att, cmask, ref = [], [], [], []
    for r in parts:
        p, t = r.input_ids.shape[1] - r.completion_mask.shape[1], r.completion_mask.shape[1]
        pad_l, pad_r = P - p, T - t
        ids.append(torch.nn.functional.pad(r.input_ids, (pad_l, pad_r), value=0))
        att.append(torch.nn.functional.pad(r.attention_mask, (pad_l, pad_r), value=0))
        cmask.append(torch.nn.functional.pad(r.completion_mask, (0, pad_r), value=0))
        if r.ref_logps is not None:
            ref.append(torch.nn.functional.pad(r.ref_logps, (0, pad_r)))
    visual = {key: torch.cat([r.visual[key] for r in parts]) for key in parts[0].visual}
    return Rollout(torch.cat(ids), torch.cat(att), torch.cat(cmask), visual,
                   [t for r in parts for t in r.texts], torch.cat([r.accuracy for r in parts]),
                   torch.cat([r.format for r in parts]),
                   torch.cat(ref) if len(ref) == len(parts) else None)


@contextmanager
def gathered_for_generation(model):
    """Under FSDP2, gather each layer once for the whole rollout instead of once per decoded token.

    Every sharded module is gathered up front and kept gathered (generate also calls the vision
    tower outside the root's forward, where FSDP2's hooks would not gather it), then resharded when
    generation ends. Costs one full copy of the weights during the rollout. A no-op when unsharded.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        FSDPModule = ()
    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in sharded:
        m.set_reshard_after_forward(False)
        m.unshard()
    try:
        yield bool(sharded)
    finally:
        for m in sharded:
            m.reshard()
            m.set_reshard_after_forward(True)


@torch.no_grad()
def generate_rollout(model, processor, records, videos, group_size, hints=None, max_new_tokens=64,
                     temperature=1.0, top_p=1.0, greedy=False, synced_gpus=False, sampler="auto", decode_compile=None,
                     decode_graph=True):
    """Sample `group_size` answers for each (record, video) and score them.

    sampler: "fast" (machinery/sampler.py: one prefill per prompt, our compiled decode step), "hf" (transformers'
    generate over the B * G repeated prompts, the reference), "auto" (sampler.resolve). decode_compile,
    decode_graph: the fast sampler's torch.compile and CUDA graph, on a CUDA device only (decode_compile
    None: sampler.speedups decides by model size).
    Vision placeholder tokens are suppressed at sampling time: a sampled <|video_pad|> would make
    the next forward fail with "video features and video tokens do not match".
    """
    hints = hints or [""] * len(records)
    prompt = encode_prompts(processor, records, videos, hints)          # B rows, cpu
    was_training = model.training
    model.eval()
    tok = processor.tokenizer
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    with gathered_for_generation(model):
        if resolve_sampler(sampler, model.device) == "fast":
            cuda = model.device.type == "cuda"
            completion = sample(model, to_device(prompt, model.device), group_size, max_new_tokens, end_id,
                                tok.pad_token_id, vision_token_ids(processor), temperature, top_p, greedy,
                                compile=decode_compile if decode_compile is None else decode_compile and cuda,
                                graph=decode_graph and cuda)
        else:
            repeated = to_device(repeat_batch(prompt, group_size), model.device)
            sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature,
                                                             "top_p": top_p, "top_k": 0}
            sequences = model.generate(
                **repeated, **sampling, max_new_tokens=max_new_tokens,
                suppress_tokens=vision_token_ids(processor), eos_token_id=end_id,
                pad_token_id=tok.pad_token_id, synced_gpus=synced_gpus)
            completion = sequences[:, repeated["input_ids"].shape[1]:]
    model.train(was_training)
    completion = completion.cpu()                                            # (N, T)
    completion_mask = completion_mask_until(completion, end_id)
    completion = completion.masked_fill(completion_mask == 0, tok.pad_token_id)
    texts = tok.batch_decode(completion.masked_fill(completion == end_id, tok.pad_token_id),
                             skip_special_tokens=True)
    group_records = [r for r in records for _ in range(group_size)]
    accuracy, fmt = score_completions(texts, group_records)
    batch = join_prompt_completion(repeat_batch(prompt, group_size), completion, completion_mask)
    return Rollout(batch.pop("input_ids"), batch.pop("attention_mask"), batch.pop("completion_mask"),
                   visual=batch, texts=texts, accuracy=accuracy, format=fmt)


def join_prompt_completion(prompt, completion, completion_mask):
    """One teacher-forcing batch: left-padded prompt (N, P) then right-padded completion (N, T).

    Returns the dict `logprobs.completion_logps` takes; visual keys ride along. The processor's
    prompt-length modality ids are dropped: `completion_logps` rebuilds them from the full input_ids.
    """
    batch = {k: v for k, v in prompt.items() if k != "mm_token_type_ids"}
    batch["input_ids"] = torch.cat([prompt["input_ids"], completion], 1)            # (N, P+T)
    batch["attention_mask"] = torch.cat([prompt["attention_mask"], completion_mask], 1)
    batch["completion_mask"] = completion_mask
    return batch


def completion_mask_until(completion, end_id):
    """(N, T) mask: 1 up to and including the first `end_id`, 0 after it."""
    is_end = completion == end_id
    after_end = (is_end.cumsum(1) - is_end.long()) > 0
    return (~after_end).long()


@torch.no_grad()
def reference_logps(rollout, reference, temperature=1.0, device="cpu", micro_batch=16, rows_per_forward=0,
                    group_size=0):
    """(N, T) log-probs of the sampled completions under the frozen reference policy.

    About micro_batch answers (whole groups when group_size > 1) are moved to the device at a time;
    inside them, group_size > 1 packs each group's prompt once, or rows_per_forward > 0 sorts the
    answers by length into forwards of that many rows (logprobs.length_sorted_logps).
    """
    size = max(1, micro_batch // group_size) * group_size if group_size > 1 else micro_batch
    parts = [length_sorted_logps(reference, to_device(rollout.select(rows).logp_batch(), device),
                                 rows_per_forward, group_size, temperature=temperature).cpu()
             for rows in micro_batches(len(rollout.texts), size)]
    return torch.cat(parts)


def micro_batches(n, size):
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def to_device(batch, device):
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
