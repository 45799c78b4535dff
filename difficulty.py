"""
Difficulty-aware augmentation (DeepVideo-R1, arXiv 2506.07464): a curriculum that moves every
sample toward the difficulty where its group of answers disagrees, because a group that is
all-correct or all-wrong has zero reward variance, zero advantage, and teaches nothing.

    r_cur  = mean reward of the sample's group of G answers
    r_ref  = mean reward over the last W training steps (RewardBuffer, the paper's replay buffer)
    delta  = r_cur - r_ref
    delta >  margin  (easy)  -> harder: frame noise  frames + sigma0 * l_perturb * tau, tau ~ N(0, 1),
                                l_perturb = |delta| + 1   (or mask a fraction of frames)
    delta < -margin  (hard)  -> easier: a hint of l_guide = round(|delta|) + 1 pieces in the prompt
    otherwise               -> unchanged

Rewards here are accuracy + format, each in {0, 1} (or [0, 1]), so r in [0, 2] and |delta| <= 2:
l_perturb in [1, 3] and l_guide in {1, 2, 3}. (The paper writes Delta_R = r_ref - r_cur; we use the
opposite sign so that "easy" reads as delta > 0.)

Choices the paper leaves open:
- margin = 0.25 (DEFAULT_MARGIN, the value train.py uses). The paper augments on any nonzero
  difference (margin 0). A group's mean reward moves in steps of 1/G (0.125 at G = 8) and by about
  0.2 from sampling noise alone; 0.25 (two answers' worth) leaves alone samples within that noise of
  the running average.
- W counts training steps (one push per step, holding that step's group means); r_ref is the mean
  of every reward stored. The paper's text says the last W = 100 samples; counting steps keeps
  r_ref's time span independent of batch size. Rule while empty: r_ref is None and nothing is
  augmented; from the first stored step on, r_ref is the mean of what is stored. Read r_ref before
  pushing the current step so a sample is never compared with itself.
- Noise is added in [0, 1] pixel space (uint8 / 255), then clamped to [0, 1] and cast back, with
  sigma0 = 0.1: l_perturb in [1, 3] gives a noise std of 0.1 to 0.3 of the full pixel range.
  The paper does not say in which space; [0, 1] before the processor's mean/std normalisation is
  the one where "std 0.1" means the same for every model.
- Masking blacks out (sets to 0) whole frames chosen at random; mask_fraction(delta) =
  min(0.5, (|delta| + 1) / 8), i.e. l_perturb / 8: 1/8 to 3/8 of the frames for |delta| in [0, 2].
- Hints (the paper's recipe, whose wording it does not publish): the policy is shown the question
  and its ground-truth answer, writes a few traces, the highest-reward one (against the ground
  truth) is kept per sample (HintTraces). A correct answer from the group's own sampling, when there
  is one, is the cheaper source and comes first; the dataset's reasoning is the last resort. A hint
  is the first l_guide pieces: the trace's sentences before the first one naming the answer, then
  "The answer is X." as the last piece, so the answer is given only when l_guide exceeds the
  sentences that narrow the choice.

Frames: (T, H, W, C) uint8 numpy arrays or torch tensors, or (T, C, H, W) float tensors in [0, 1].
Outputs keep type, dtype, device, layout and value range; T is dim 0 in every layout.
"""
import math
import re
from collections import deque

import numpy as np
import torch

from reg_grpo import flat_group_mask, group_advantages

DEFAULT_MARGIN = 0.25
DEFAULT_SIGMA0 = 0.1


def _as_rewards(rewards, group_size, where):
    r = torch.as_tensor(np.asarray(rewards) if isinstance(rewards, (list, tuple)) else rewards).double()
    if r.dim() != 1 or r.numel() == 0:
        raise ValueError(f"{where}: rewards must be a non-empty (N,) vector, got shape {tuple(r.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"{where}: group_size must be a positive int, got {group_size!r}")
    if r.numel() % group_size != 0:
        raise ValueError(f"{where}: group_size={group_size} does not divide N={r.numel()} rewards")
    return r.view(-1, group_size)  # (B, G)


def flat_groups(rewards, group_size):
    """(B,) bool: which groups have G equal rewards (zero variance, so every advantage is 0): the loss's own
    definition (reg_grpo.flat_group_mask) applied to the group advantages of the rewards."""
    r = _as_rewards(rewards, group_size, "flat_groups")
    return flat_group_mask(group_advantages(r.reshape(-1), group_size), group_size)


def zero_advantage_ratio(rewards, group_size):
    """Fraction of groups whose G rewards are all equal (zero variance, so every advantage is 0)."""
    return flat_groups(rewards, group_size).double().mean().item()


def group_mean_rewards(rewards, group_size):
    """r_cur per prompt: rewards (N,) with groups contiguous -> (B,) float32 group means."""
    return _as_rewards(rewards, group_size, "group_mean_rewards").mean(dim=1).float()


class RewardBuffer:
    """Group-mean rewards of the last `window` training steps; mean() is r_ref (None while empty)."""

    def __init__(self, window):
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"RewardBuffer: window must be a positive int (steps), got {window!r}")
        self.window = window
        self.steps = deque(maxlen=window)  # each item: list of floats, one step's group means

    def push(self, step_group_means):
        values = [float(v) for v in np.asarray(torch.as_tensor(step_group_means).detach().cpu()).reshape(-1)]
        if not values or not all(math.isfinite(v) for v in values):
            raise ValueError(f"RewardBuffer.push: expected a non-empty list of finite rewards, got {values}")
        self.steps.append(values)

    def mean(self):
        values = [v for step in self.steps for v in step]
        return sum(values) / len(values) if values else None

    def __len__(self):
        return len(self.steps)

    def state_dict(self):
        return {"window": self.window, "steps": [list(step) for step in self.steps]}

    def load_state_dict(self, state):
        for key in ("window", "steps"):
            if key not in state:
                raise KeyError(f"RewardBuffer.load_state_dict: missing key {key!r}, got keys {sorted(state)}")
        self.steps = deque(maxlen=self.window)  # keep this buffer's window; the newest steps win
        for step in state["steps"]:
            self.push(step)


def _round_half_up(x):
    return int(math.floor(x + 0.5))  # Python's round() sends 0.5 and 2.5 down to the even number


def plan_augmentation(r_cur, r_ref, margin=DEFAULT_MARGIN):
    """
    One plan per sample: {"action": "harder" | "easier" | "none", "delta": r_cur - r_ref,
    "l_perturb": |delta| + 1 for "harder" else 0.0, "l_guide": round_half_up(|delta|) + 1 for
    "easier" else 0}. r_ref None (empty buffer) -> every action is "none" with delta 0.
    """
    r_cur = [float(v) for v in np.asarray(torch.as_tensor(r_cur).detach().cpu(), dtype=np.float64).reshape(-1)]
    if margin < 0:
        raise ValueError(f"plan_augmentation: margin must be >= 0, got {margin}")
    plans = []
    for r in r_cur:
        delta = 0.0 if r_ref is None else r - float(r_ref)
        if delta > margin:
            plans.append({"action": "harder", "delta": delta, "l_perturb": abs(delta) + 1.0, "l_guide": 0})
        elif delta < -margin:
            plans.append({"action": "easier", "delta": delta, "l_perturb": 0.0, "l_guide": _round_half_up(abs(delta)) + 1})
        else:
            plans.append({"action": "none", "delta": delta, "l_perturb": 0.0, "l_guide": 0})
    return plans


def _generator(generator):
    # None -> global RNG; int -> fresh seeded CPU generator; torch.Generator -> itself
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (int, np.integer)):
        return torch.Generator().manual_seed(int(generator))
    raise ValueError(f"generator must be None, an int seed or a torch.Generator, got {type(generator).__name__}")


def _to_unit(frames, where):
    """frames -> (float32 tensor in [0, 1], function mapping such a tensor back to the input's kind)."""
    is_numpy = isinstance(frames, np.ndarray)
    x = torch.from_numpy(frames) if is_numpy else frames
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"{where}: frames must be a 4-D (T, H, W, C) uint8 or (T, C, H, W) float array, "
                         f"got {type(frames).__name__} of shape {tuple(getattr(frames, 'shape', ()))}")
    if x.dtype == torch.uint8:
        unit = x.float() / 255.0
    elif x.is_floating_point():
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"{where}: float frames must lie in [0, 1] (before normalisation), "
                             f"got range [{x.min().item():.3g}, {x.max().item():.3g}]")
        unit = x.float()
    else:
        raise ValueError(f"{where}: frames must be uint8 or float, got dtype {x.dtype}")

    def back(u):
        u = u.clamp(0.0, 1.0)
        out = (u * 255.0).round().to(torch.uint8) if x.dtype == torch.uint8 else u.to(x.dtype)
        return out.numpy() if is_numpy else out

    return unit, back


def add_frame_noise(frames, l_perturb, sigma0=DEFAULT_SIGMA0, generator=None):
    """frames + sigma0 * l_perturb * tau, tau ~ N(0, 1) per element, in [0, 1] pixel space, clamped."""
    if not l_perturb >= 0 or not sigma0 >= 0:
        raise ValueError(f"add_frame_noise: l_perturb and sigma0 must be >= 0, got {l_perturb}, {sigma0}")
    unit, back = _to_unit(frames, "add_frame_noise")
    g = _generator(generator)
    tau = torch.randn(unit.shape, generator=g, device=g.device if g is not None else "cpu")
    return back(unit + sigma0 * float(l_perturb) * tau.to(unit.device))


def mask_fraction(delta):
    """Fraction of frames to mask for difficulty delta: min(0.5, (|delta| + 1) / 8) = l_perturb / 8."""
    return min(0.5, (abs(float(delta)) + 1.0) / 8.0)


def mask_frames(frames, fraction, generator=None):
    """Set round_half_up(fraction * T) randomly chosen whole frames to 0 (at least 1 if fraction > 0)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"mask_frames: fraction must be in [0, 1], got {fraction}")
    unit, back = _to_unit(frames, "mask_frames")
    t = unit.shape[0]
    k = min(t, max(1 if fraction > 0 else 0, _round_half_up(fraction * t)))
    chosen = torch.randperm(t, generator=_generator(generator))[:k]
    unit = unit.clone()
    unit[chosen.to(unit.device)] = 0.0
    return back(unit)


def make_harder(frames, plan, mode="noise", sigma0=DEFAULT_SIGMA0, generator=None):
    """Apply one sample's plan: noise (l_perturb) or masking (mask_fraction(delta)); else unchanged."""
    if mode not in ("noise", "mask"):
        raise ValueError(f"make_harder: mode must be 'noise' or 'mask', got {mode!r}")
    if plan["action"] != "harder":
        return frames
    if mode == "noise":
        return add_frame_noise(frames, plan["l_perturb"], sigma0=sigma0, generator=generator)
    return mask_frames(frames, mask_fraction(plan["delta"]), generator=generator)


def plan_groups(rewards, group_size, r_ref, margin=DEFAULT_MARGIN, augment="both", flat_only=True):
    """
    Which groups to redo, and which way: plan_augmentation on each group's r_cur, then action "none"
    where the settings leave a group alone: a direction `augment` (none | harder | easier | both)
    does not ask for, or, with flat_only, a group whose rewards already differ (regenerating it can
    only lose signal). The paper's rule is flat_only=False.
    """
    if augment not in ("none", "harder", "easier", "both"):
        raise ValueError(f"plan_groups: augment must be none | harder | easier | both, got {augment!r}")
    plans = plan_augmentation(group_mean_rewards(rewards, group_size), r_ref, margin)
    flat = flat_groups(rewards, group_size).tolist()
    for plan, is_flat in zip(plans, flat):
        if augment not in (plan["action"], "both") or (flat_only and not is_flat):
            plan.update(action="none", l_perturb=0.0, l_guide=0)
    return plans


def redo_groups(plans, records, videos, rollout, group_size, traces, harder_mode="noise",
                sigma0=DEFAULT_SIGMA0, generator=None):
    """
    With what video or hint to redo each group: one {"redo", "frames", "hint", "hint_source"} per group.
    "harder": the sample's frames made harder (make_harder), no hint. "easier": its own frames and a
    hint of the first l_guide pieces of a trace (hint_trace; hint_source says which of HINT_SOURCES
    it came from). rollout: texts (N,) and accuracy (N,) of the first sampling, groups of group_size
    contiguous. traces: the HintTraces store.
    """
    out = []
    for i, (plan, record, frames) in enumerate(zip(plans, records, videos)):
        hint, source = "", None
        if plan["action"] == "harder":
            frames = make_harder(frames, plan, mode=harder_mode, sigma0=sigma0, generator=generator)
        elif plan["action"] == "easier":
            trace, source = hint_trace_and_source(record, own_correct_answers(rollout, group_size, i), traces)
            hint = build_hint(plan["l_guide"], hint_pieces(trace, record))
        out.append({"redo": plan["action"] != "none", "frames": frames, "hint": hint, "hint_source": source})
    return out


def wants_trace(plans, records, rollout, group_size, traces):
    """Indices of the samples that need an answer-conditioned trace made now: "easier" groups with no
    correct answer of their own and no trace stored yet."""
    return [i for i, (plan, record) in enumerate(zip(plans, records))
            if plan["action"] == "easier" and not own_correct_answers(rollout, group_size, i)
            and record["id"] not in traces]


# ---- easier: hints ----

class HintTraces:
    """
    The paper's source of hints: for each sample (by id), the highest-reward of a few reasoning traces
    the policy wrote when shown the question and its ground-truth answer (answer_piece), rewarded
    against the ground truth as usual. Made once per sample, when a hint first needs it, then kept
    (state_dict goes into the checkpoint). "" when no trace qualifies.

    A trace qualifies when its answer is right and, for a multiple-choice record, its reasoning agrees
    with that answer (agrees_with_answer): a policy that has never seen an answer in its prompt may copy
    the letter and reason its way to another option, and such a trace would mislead as a hint.
    """

    def __init__(self):
        self.traces = {}  # sample id -> <think> text of the best qualifying trace, or ""

    def add(self, sample_id, completions, accuracy, rewards, record=None):
        accuracy, rewards = [float(a) for a in accuracy], [float(r) for r in rewards]
        if not len(completions) == len(accuracy) == len(rewards):
            raise ValueError(f"HintTraces.add: {len(completions)} completions, {len(accuracy)} accuracies, "
                             f"{len(rewards)} rewards for {sample_id!r}")
        ok = [j for j, a in enumerate(accuracy)
              if a > 0 and (record is None or agrees_with_answer(_think(completions[j]), record))]
        best = max(ok, key=lambda j: rewards[j], default=None)  # first of equals
        self.traces[sample_id] = "" if best is None else _think(completions[best]).strip()

    def get(self, sample_id):
        return self.traces.get(sample_id, "")

    def __contains__(self, sample_id):
        return sample_id in self.traces

    def __len__(self):
        return len(self.traces)

    def state_dict(self):
        return {"traces": dict(self.traces)}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or not isinstance(state.get("traces"), dict):
            raise KeyError(f"HintTraces.load_state_dict: expected {{'traces': {{id: text}}}}, got {state!r:.80}")
        self.traces = {str(k): str(v) for k, v in state["traces"].items()}


def own_correct_answers(rollout, group_size, i):
    """Group i's completions that got the answer right (accuracy > 0), in sampling order."""
    rows = range(i * group_size, (i + 1) * group_size)
    return [rollout.texts[j] for j in rows if rollout.accuracy[j] > 0]


HINT_SOURCES = ("own_answer", "policy_trace", "dataset", "none")


def hint_trace(record, own_correct=(), traces=None):
    """The trace a hint is cut from, first found of: the group's own first correct answer (the
    cheaper source), the stored answer-conditioned trace, the dataset's reasoning, ""."""
    return hint_trace_and_source(record, own_correct, traces)[0]


def hint_trace_and_source(record, own_correct=(), traces=None):
    """(hint_trace's trace, where it came from: one of HINT_SOURCES). The first two are the policy's
    own writing (a correct answer of the group, an answer-conditioned trace); "dataset" is the record's
    reasoning, the last resort."""
    if isinstance(own_correct, str):
        raise ValueError("hint_trace: own_correct must be a list of completions, got one string")
    for text in own_correct:
        if _think(text).strip():
            return _think(text).strip(), "own_answer"
    stored = traces.get(record["id"]) if traces is not None else ""
    if stored:
        return stored, "policy_trace"
    reasoning = record.get("reasoning") or ""
    return reasoning, "dataset" if reasoning else "none"


def answer_text(record):
    """The answer as words: a multiple-choice letter's option text, else the answer itself."""
    answer, options = str(record["answer"]).strip(), record.get("options") or []
    if record.get("problem_type") == "multiple_choice" and len(answer) == 1 and 0 <= ord(answer) - 65 < len(options):
        return str(options[ord(answer) - 65])
    return answer


def answer_piece(record):
    """The last piece of every hint, and what the policy is shown when it writes a trace."""
    return f"The answer is {' '.join(str(record['answer']).split()).rstrip('.')}."


def names_answer(sentence, record):
    """Does the sentence name the answer: its letter as a word (case kept), or its text (any case)?"""
    letter, text = str(record["answer"]).strip(), answer_text(record)
    if len(letter) == 1 and re.search(rf"\b{re.escape(letter)}\b", sentence):
        return True
    return bool(text) and mentions(sentence, text)


def mentions(text, phrase):
    """Does `text` contain `phrase` as whole words, in any case?"""
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, flags=re.IGNORECASE) is not None


def agrees_with_answer(reasoning, record):
    """For a multiple-choice record: the reasoning names the answer's text and no other option's text
    (any case, whole words). Other problem types: True (no options to disagree with)."""
    options = record.get("options") or []
    if record.get("problem_type") != "multiple_choice" or not options:
        return True
    answer = answer_text(record)
    others = [str(o) for o in options if str(o) != answer]
    return mentions(reasoning, answer) and not any(mentions(reasoning, o) for o in others)


def hint_pieces(trace, record):
    """
    A hint's pieces in order: the trace's sentences before the first one that names the answer
    (they narrow the choice without giving it), then answer_piece(record), always the last piece.
    """
    pieces = []
    for sentence in _sentences(trace or ""):
        if names_answer(sentence, record):
            break
        pieces.append(sentence)
    return pieces + [answer_piece(record)]


def build_hint(l_guide, pieces):
    """The first l_guide pieces, one line (l_guide = round(|delta|) + 1: more for harder samples)."""
    if isinstance(l_guide, bool) or not isinstance(l_guide, int) or l_guide < 0:
        raise ValueError(f"build_hint: l_guide must be an int >= 0, got {l_guide!r}")
    if isinstance(pieces, str):
        raise ValueError("build_hint: pieces must be a list of strings, got one string")
    return " ".join(pieces[:l_guide])


def _sentences(text):
    text = " ".join(text.split())  # one line: hints must not break the prompt's layout
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def _think(completion):
    m = re.search(r"<think>(.*?)</think>", completion, flags=re.DOTALL)
    return m.group(1) if m else completion


def make_easier_prompt(question_text, hint):
    """Append a line "Hint: ..." to the question; an empty hint leaves the question unchanged."""
    if not hint:
        return question_text
    return f"{question_text}\nHint: {hint}"
