"""What the speed-ups must not change: greedy answers do not depend on how many questions share a batch."""

import numpy as np
import pytest

import model as M
from rollout import generate_rollout

QUESTIONS = ["Which way does the red square move?", "How many circles?",
             "Which colour appears first in the whole video clip, before any other shape?",
             "What colour does the blue circle turn into at the end?", "Count the red shapes."]


@pytest.fixture(scope="module")
def policy():
    model, processor = M.build_tiny(texts=QUESTIONS * 10, seed=0)
    return model.eval(), processor


def samples(n, seed=0):
    """Records with questions of different lengths (so different left padding) and random clips."""
    rng = np.random.default_rng(seed)
    return [{"question": QUESTIONS[i % len(QUESTIONS)], "options": ["left", "right", "up", "down"],
             "answer": "A", "problem_type": "multiple_choice",
             "frames": rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8), "times": np.arange(4) / 2}
            for i in range(n)]


def greedy_texts(policy, batch):
    model, processor = policy
    return generate_rollout(model, processor, batch, [s["frames"] for s in batch], 1, max_new_tokens=12,
                            greedy=True).texts


def test_greedy_answers_do_not_depend_on_batch_width(policy):
    """evaluate() batches 64 questions per generate call: each answer must be the one it gets alone."""
    batch = samples(5)
    alone = [greedy_texts(policy, [s])[0] for s in batch]
    assert len(set(alone)) > 1                       # the answers differ, so a mix-up would show
    assert greedy_texts(policy, batch) == alone
    assert greedy_texts(policy, batch[::-1]) == alone[::-1]
