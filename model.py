"""The policy: Qwen2.5-VL through the transformers Auto classes, plus a tiny random-init stand-in.

load_policy / load_reference load any Qwen2.5-VL checkpoint (a hub id or a local directory);
tiny_qwen25vl writes a random-init Qwen2.5-VL with our own byte-level BPE tokenizer and the real
processor classes into a directory, so that the same load_policy loads it.

The log-probs of completions under the policy (the trainer's forward pass) are in machinery/logprobs.py; the
speed-ups installed on a loaded model in machinery/speedups.py.

Sampling trap: an untrained policy puts mass on <|video_pad|> and friends; a sampled placeholder makes
the next forward fail with "Video features and video tokens do not match". Pass
`suppress_tokens=vision_token_ids(processor)` to generate (and the same list to logprobs.completion_logps if
the log-probs must be those of the suppressed sampling distribution).

Video timing: the 3D rope spaces the temporal groups by tokens_per_second * second_per_grid_ts, and
second_per_grid_ts = temporal_patch_size / fps is taken from `video_metadata`, not from an `fps`
kwarg, when the processor does not sample frames itself. Pass
`video_metadata=[{"total_num_frames": T, "fps": fps_of_the_sampled_frames}, ...]` to the processor call;
without it transformers assumes 24 fps and, with Qwen2.5-VL's tokens_per_second = 2, all temporal
groups of a short clip get the same temporal position.
"""

import os
import re

import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from machinery.speedups import ALL as ALL_SPEEDUPS, apply as apply_speedups

# Qwen's special tokens (same strings as the real tokenizer) and the plain tags our rewards look for.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# Pixel budget per frame for the processors: frames arrive already resized to multiples of 28 with
# H*W <= MAX_PIXELS, so smart_resize leaves them as they are (no resampling in the processor).
MIN_PIXELS = 28 * 28
MAX_PIXELS = 128 * 28 * 28

# Qwen-style chat template: no default system turn; a {"type": "video"} part becomes
# <|vision_start|><|video_pad|><|vision_end|> which the processor expands to one pad per video token.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'video' -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# A few lines so that an empty `texts` still trains a tokenizer with some merges.
DEFAULT_TEXTS = [
    "Which way does the red square move? A. left B. right C. up D. down",
    "<think>The object starts on the left. It ends on the right. So it moves right.</think>"
    "<answer>B</answer>",
    "How many circles appear in the video? Which object appears first? What colour is it at the end?",
]


def train_tokenizer(texts=(), vocab_size=768):
    """Byte-level BPE on `texts` (plus DEFAULT_TEXTS), Qwen's special tokens, tags as plain tokens.

    Like Qwen's tokenizer: no BOS is prepended, eos = <|im_end|>, pad = <|endoftext|>.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts) + DEFAULT_TEXTS, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=32768)


def tiny_config(tokenizer, **size_overrides):
    """Qwen2.5-VL config scaled down; size_overrides go to the text config unless prefixed `vision_`."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=14,
                  temporal_patch_size=2, spatial_merge_size=2, window_size=112, fullatt_block_indexes=[0],
                  tokens_per_second=2)
    for k, v in size_overrides.items():
        if k.startswith("vision_"):
            vision[k[len("vision_"):]] = v
        else:
            text[k] = v
    vision["out_hidden_size"] = text["hidden_size"]
    half = text["hidden_size"] // text["num_attention_heads"] // 2
    hw = (3 * half) // 8  # Qwen's split of the rotary half-dim into (t, h, w): 16/24/24 of 64
    text.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 20.0,
                                        "mrope_section": [half - 2 * hw, hw, hw]})
    head_dim = 2 * half
    if sum(text["rope_parameters"]["mrope_section"]) != head_dim // 2:
        raise ValueError(f"mrope_section {text['rope_parameters']['mrope_section']} must sum to "
                         f"head_dim/2 = {head_dim // 2}; pass rope_parameters=... with a matching section")
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision,
                            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                            vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"],
                            bos_token_id=text["bos_token_id"], eos_token_id=text["eos_token_id"],
                            pad_token_id=text["pad_token_id"])


def make_processor(tokenizer):
    """The real Qwen2.5-VL processor classes with a budget that keeps our frames' size and count."""
    kw = dict(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14, temporal_patch_size=2, merge_size=2)
    image_processor = Qwen2VLImageProcessor(**kw)
    video_processor = Qwen2VLVideoProcessor(**kw, do_sample_frames=False, cap_pixels_per_frame=False)
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=video_processor, chat_template=CHAT_TEMPLATE)


def build_tiny(texts=(), seed=0, vocab_size=768, **size_overrides):
    """(model, processor) of the tiny Qwen2.5-VL in memory; deterministic given texts and seed."""
    tokenizer = train_tokenizer(texts, vocab_size)
    config = tiny_config(tokenizer, **size_overrides)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    text = config.text_config
    # Plain sampling from softmax(logits / temperature): no top-k / top-p unless the caller asks.
    model.generation_config = GenerationConfig(
        eos_token_id=[text.eos_token_id, text.bos_token_id],  # <|im_end|>, <|endoftext|> as in Qwen
        pad_token_id=text.pad_token_id, bos_token_id=text.bos_token_id,
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    return model, make_processor(tokenizer)


def tiny_qwen25vl(out_dir, texts=(), seed=0, vocab_size=768, **size_overrides):
    """Random-init Qwen2.5-VL + our tokenizer + the real processors, saved into out_dir; returns out_dir.

    Defaults: text 4 layers, hidden 128, 4 heads (2 kv, head_dim 32), MLP 256, mrope_section [4, 6, 6];
    vision 1 block, hidden 64, 2 heads, patch 14, temporal patch 2, merge 2, out_hidden 128.
    About 0.91 M parameters (0.22 M of them vision) with the ~380-token vocabulary of an empty corpus,
    1.0 M with a full 772-token one.
    size_overrides: text config keys (hidden_size=..., num_hidden_layers=...) or vision_<key>.
    """
    model, processor = build_tiny(texts, seed, vocab_size, **size_overrides)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return str(out_dir)


HUB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def source_problem(name):
    """Why `name` is neither a saved model directory nor a hub id, or None.

    A hub id is 'org/name' (one '/', no leading '.', '~' or '/') whose first component is not a
    local folder: `out/nope` with an existing `out/` is a mistyped local path, not a hub id.
    """
    name = os.fspath(name)
    if os.path.isfile(name):
        return f"{name}: expected a model directory (config.json, weights, processor), found a file"
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            return f"{name}: directory has no config.json; not a saved model"
        return folder_problem(name)
    if HUB_ID_RE.fullmatch(name) and not os.path.isdir(name.split("/")[0]):
        return None
    return (f"{name}: no such model directory (expected a directory written by save_pretrained "
            "or a hub id like 'Qwen/Qwen2.5-VL-7B-Instruct')")


WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def folder_problem(folder):
    """What keeps a save_pretrained folder from loading, found without loading it: config.json that is not
    JSON, no weights, a weights index naming missing files, a safetensors file whose header is damaged or
    that ends before its tensors do (truncated), no tokenizer. None when none of these."""
    import json
    from safetensors import SafetensorError, safe_open
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            json.load(f)
    except (ValueError, OSError) as e:
        return f"{folder}/config.json: not readable JSON ({e})"
    files = [f for f in WEIGHT_FILES if os.path.isfile(os.path.join(folder, f))]
    for index in WEIGHT_INDEXES:
        path = os.path.join(folder, index)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    files += sorted(set(json.load(f)["weight_map"].values()))
            except (ValueError, OSError, KeyError, TypeError, AttributeError) as e:
                return f"{path}: not a weights index (JSON with a weight_map) ({type(e).__name__}: {e})"
    if not files:
        return (f"{folder}: no weights (expected {' or '.join(WEIGHT_FILES)}, or an index "
                f"{' / '.join(WEIGHT_INDEXES)} with its shards)")
    for name in files:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{path}: missing (the weights index names it)"
        if name.endswith(".safetensors"):
            try:
                with safe_open(path, "pt"):
                    pass
            except (SafetensorError, OSError) as e:
                why = "truncated (it ends before its tensors do)" if "not fully covered" in str(e) else "corrupt"
                return f"{path}: {why}: not a loadable safetensors file ({e})"
    if not any(os.path.isfile(os.path.join(folder, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        return f"{folder}: no tokenizer (tokenizer.json / tokenizer_config.json): the processor cannot be loaded"
    return None


def _check_source(name_or_path):
    """`name_or_path` as a string; FileNotFoundError (a path that is not a model folder) or SystemExit
    (a model folder that cannot load) naming it when source_problem finds a problem."""
    problem = source_problem(name_or_path)
    if problem and os.path.isdir(name_or_path) and os.path.isfile(os.path.join(name_or_path, "config.json")):
        raise SystemExit(problem)
    if problem:
        raise (NotADirectoryError if "found a file" in problem else FileNotFoundError)(problem)
    return os.fspath(name_or_path)


def load_policy(name_or_path, dtype=torch.float32, device="cpu", attn_implementation="sdpa", speedups=ALL_SPEEDUPS):
    """(model, processor) for any Qwen2.5-VL checkpoint, through AutoModelForImageTextToText, with the
    named speed-ups of machinery/speedups.py installed (`speedups=()`: transformers' model as shipped)."""
    name = _check_source(name_or_path)
    try:
        model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype,
                                                            attn_implementation=attn_implementation)
        processor = AutoProcessor.from_pretrained(name)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError) as e:
        lines = [line for line in str(e).splitlines() if line.strip()] or [""]
        raise SystemExit(f"{name}: cannot load the model as a local directory or a hub id "
                         f"({type(e).__name__}: {lines[0][:300]})") from e
    return apply_speedups(model.to(device), speedups), processor


def load_reference(name_or_path, dtype=torch.float32, device="cpu", attn_implementation="sdpa", speedups=ALL_SPEEDUPS):
    """The frozen reference policy pi_ref: eval mode, requires_grad False everywhere. Returns the model."""
    model, _ = load_policy(name_or_path, dtype=dtype, device=device, attn_implementation=attn_implementation,
                           speedups=speedups)
    model.eval()
    model.requires_grad_(False)
    return model


def freeze_vision(model):
    """Freeze the vision tower (patch embed, blocks, merger); only the language model and lm_head train."""
    model.model.visual.requires_grad_(False)
    return model


def enable_gradient_checkpointing(model):
    """Recompute decoder activations in backward; non-reentrant, so a frozen vision tower is fine.

    transformers also hooks every input embedding (the vision patch embed included) to output
    requires_grad=True, which is for adapters on a frozen model. Here the embeddings train, and the
    hook made the frozen vision tower run twice and backpropagate (3B, 16 frames: a third of the
    update step on an H100), so it is removed.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # newer name; the old one warns there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "disable_input_require_grads"):
        model.disable_input_require_grads()
    model.config.use_cache = False
    return model


def max_positions(model):
    """The language model's position limit (max_position_embeddings of its text config)."""
    return getattr(model.config, "text_config", model.config).max_position_embeddings


def vision_token_ids(processor):
    """Ids that must never be sampled: vision placeholders and their start/end/pad markers."""
    tok = getattr(processor, "tokenizer", processor)
    vocab = tok.get_vocab()
    return sorted(vocab[t] for t in VISION_TOKENS if t in vocab)


def count_parameters(model, trainable_only=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
