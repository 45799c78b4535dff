"""
The rewards of an answer: format (<think>...</think><answer>...</answer>) and accuracy by problem type
(Video-R1's rules: option letter, number, ROUGE for free-form answers, word error rate for OCR, relative
error for regression). Plain functions of (completion text, record): change them here.
"""
import re

import torch

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
FORMAT_RE = re.compile(r"^\s*<think>.+?</think>\s*<answer>.+?</answer>\s*$", re.DOTALL)


def extract_answer(text):
    """Text inside the last <answer>...</answer>, stripped; None when there is none."""
    found = ANSWER_RE.findall(text)
    return found[-1].strip() if found else None


def format_reward(text):
    """1.0 when the completion is exactly <think>...</think><answer>...</answer>, else 0.0."""
    return 1.0 if FORMAT_RE.match(text) else 0.0


def option_letter(answer):
    """'B', 'B.', '(B)', 'B. right' -> 'B'; None when the answer does not start with a letter."""
    m = re.match(r"^\(?([A-Z])\)?(?:[.:)]|\s|$)", answer.strip())
    return m.group(1) if m else None


def parse_number(text):
    m = re.search(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    return float(m.group()) if m else None


def words(text):
    """Lower-cased alphanumeric words (punctuation is a separator), the tokens of ROUGE and WER."""
    return re.findall(r"[a-z0-9]+", text.lower())


def ngram_counts(tokens, n):
    counts = {}
    for i in range(len(tokens) - n + 1):
        key = tuple(tokens[i:i + n])
        counts[key] = counts.get(key, 0) + 1
    return counts


def f1(overlap, n_pred, n_ref):
    """F1 = 2PR / (P + R) with P = overlap / n_pred, R = overlap / n_ref; 0 when nothing overlaps."""
    return 0.0 if overlap == 0 else 2 * overlap / (n_pred + n_ref)


def rouge_n(pred, ref, n):
    """ROUGE-N F1: clipped n-gram matches, sum_g min(c_pred(g), c_ref(g))."""
    p, r = ngram_counts(pred, n), ngram_counts(ref, n)
    overlap = sum(min(c, r.get(g, 0)) for g, c in p.items())
    return f1(overlap, sum(p.values()), sum(r.values()))


def lcs_length(a, b):
    """Longest common subsequence of two token lists (dynamic programming, one row at a time)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_reward(pred, ref):
    """Video-R1's free-form reward: mean of the ROUGE-1, ROUGE-2 and ROUGE-L F1 scores over words().
    (Video-R1 also stems words with Porter's stemmer; we do not.)"""
    p, r = words(pred), words(ref)
    return (rouge_n(p, r, 1) + rouge_n(p, r, 2) + f1(lcs_length(p, r), len(p), len(r))) / 3


def edit_distance(a, b):
    """Levenshtein distance between token lists: substitutions + deletions + insertions."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def wer_reward(pred, ref):
    """Video-R1's OCR reward: max(0, 1 - WER), WER = edit_distance(ref, pred) / len(ref) over words()."""
    p, r = words(pred), words(ref)
    if not r:
        return float(not p)
    return max(0.0, 1.0 - edit_distance(r, p) / len(r))


def accuracy_reward(text, record):
    """The accuracy reward in [0, 1], by problem type (Video-R1's rules):

    multiple_choice: 1 for the right option letter; numerical: 1 when equal after rounding to 2
    decimals; regression: 1 - relative error, floored at 0; free_form: mean ROUGE-1/2/L F1
    (rouge_reward); ocr: 1 - word error rate, floored at 0 (wer_reward).
    """
    answer = extract_answer(text)
    if answer is None:
        return 0.0
    kind, truth = record["problem_type"], str(record["answer"])
    if kind == "multiple_choice":
        return float(option_letter(answer) == truth.strip().upper())
    if kind in ("numerical", "regression"):
        pred, gold = parse_number(answer), parse_number(truth)
        if pred is None or gold is None:
            return 0.0
        if kind == "numerical":
            return float(round(pred, 2) == round(gold, 2))
        return max(0.0, 1.0 - abs(pred - gold) / max(abs(gold), 1e-6))
    if kind == "free_form":
        return rouge_reward(answer, truth)
    if kind == "ocr":
        return wer_reward(answer, truth)
    raise ValueError(f"problem_type {kind!r} has no reward rule")


def score_completions(texts, records):
    """(accuracy, format) rewards, each (N,) float32; records[i] is the record of answer i."""
    acc = torch.tensor([accuracy_reward(t, r) for t, r in zip(texts, records)])
    fmt = torch.tensor([format_reward(t) for t in texts])
    return acc, fmt
