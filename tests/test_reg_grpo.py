import math

import numpy as np
import pytest
import torch

from baselines import grpo_loss, rebel_loss
from reg_grpo import check_groups, group_advantages, reg_grpo_loss

G = 4


def ids(n, g=G):
    return torch.arange(n) // g


def reg(logps, old, adv, mask, g=G, **kw):
    return reg_grpo_loss(logps, old, adv, mask, ids(logps.shape[0], g), group_size=g, **kw)


def paper(logps, old, adv, mask, g=G, **kw):
    """The loss as printed: paper form, rho the token sum (unless token_mean is given)."""
    kw.setdefault("token_mean", False)
    return reg(logps, old, adv, mask, g, form="paper", **kw)


def reg_sum(logps, old, adv, mask, g=G, **kw):
    """The scaled form with rho the token sum (the default is the mean)."""
    return reg(logps, old, adv, mask, g, token_mean=False, **kw)


def grpo(logps, old, adv, mask, g=G, **kw):
    return grpo_loss(logps, old, adv, mask, ids(logps.shape[0], g), group_size=g, **kw)


def _batch(n_groups=3, t=5, seed=0, dtype=torch.float64, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    n = n_groups * G
    old = -torch.rand(n, t, generator=g, dtype=dtype) * 3
    logps = old + spread * 0.3 * torch.randn(n, t, generator=g, dtype=dtype)
    ref = old + 0.2 * torch.randn(n, t, generator=g, dtype=dtype)
    mask = torch.ones(n, t)
    mask[1, 3:] = 0
    mask[6, 1:] = 0
    rewards = torch.randint(0, 3, (n,), generator=g).double()
    rewards[:G] = torch.tensor([0.0, 1.0, 2.0, 1.0])  # at least one group with variance
    return logps, old, ref, mask, rewards


def _ref_advantages(rewards, eps):
    out = []
    for i in range(0, len(rewards), G):
        grp = [float(r) for r in rewards[i:i + G]]
        m = sum(grp) / G
        s = math.sqrt(sum((r - m) ** 2 for r in grp) / G)
        out += [(r - m) / (s + eps) for r in grp]
    return out


def _ref_k3(logps, ref, mask):
    per_answer = []
    for i in range(logps.shape[0]):
        vals = [math.exp(ref[i, t] - logps[i, t]) - (ref[i, t] - logps[i, t]) - 1
                for t in range(logps.shape[1]) if mask[i, t]]
        per_answer.append(sum(vals) / max(len(vals), 1))
    return sum(per_answer) / len(per_answer)


def _ref_reg_grpo(logps, old, adv, mask, ref, beta, eps, token_mean=False):
    lp, ol, rf, mk = logps.tolist(), old.tolist(), ref.tolist(), mask.tolist()
    rho = [sum(lp[i][t] - ol[i][t] for t in range(len(lp[i])) if mk[i][t]) for i in range(len(lp))]
    if token_mean:
        rho = [r / sum(mk[i]) for i, r in enumerate(rho)]
    total = 0.0
    for i in range(0, len(rho), G):
        grp = rho[i:i + G]
        m = sum(grp) / G
        s = max(math.sqrt(sum((r - m) ** 2 for r in grp) / G), eps)
        total += sum((float(adv[i + j]) - (grp[j] - m) / s) ** 2 for j in range(G))
    return total / len(rho) + beta * _ref_k3(np.array(lp), np.array(rf), np.array(mk))


def test_group_advantages_match_float64_reference():
    rewards = torch.tensor([0.0, 1.0, 1.0, 2.0, 0.5, 0.5, 1.5, 0.0])
    got = group_advantages(rewards, G)
    assert got.shape == (8,) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _ref_advantages(rewards.tolist(), 1e-4), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(group_advantages(rewards, G, eps=0.5).numpy(),
                               _ref_advantages(rewards.tolist(), 0.5), rtol=1e-6)


def test_reg_grpo_loss_matches_float64_reference():
    logps, old, ref, mask, rewards = _batch()
    adv = group_advantages(rewards, G)
    for beta, r in ((0.0, None), (0.1, ref), (0.0, ref)):
        loss, stats = paper(logps, old, adv, mask, ref_logps=r, beta=beta)
        want = _ref_reg_grpo(logps, old, adv, mask, ref, beta, 1e-4)
        assert loss.item() == pytest.approx(want, rel=1e-10)
        assert stats["kl"] == (pytest.approx(_ref_k3(logps.numpy(), ref.numpy(), mask.numpy()), rel=1e-10)
                               if r is not None else 0.0)
        assert stats["reg_loss"] == pytest.approx(_ref_reg_grpo(logps, old, adv, mask, ref, 0.0, 1e-4), rel=1e-10)


def test_token_mean_rho_matches_float64_reference():
    logps, old, ref, mask, rewards = _batch()  # rows 1 and 6 are shorter: sum and mean differ
    adv = group_advantages(rewards, G)
    loss, _ = paper(logps, old, adv, mask, ref_logps=ref, beta=0.1, token_mean=True)
    assert loss.item() == pytest.approx(_ref_reg_grpo(logps, old, adv, mask, ref, 0.1, 1e-4, token_mean=True),
                                        rel=1e-10)
    assert loss.item() != pytest.approx(_ref_reg_grpo(logps, old, adv, mask, ref, 0.1, 1e-4), rel=1e-6)
    full = torch.ones_like(mask)  # equal lengths: the z-score cannot tell a sum from a mean
    assert (paper(logps, old, adv, full, token_mean=True)[0].item()
            == pytest.approx(paper(logps, old, adv, full)[0].item(), rel=1e-9))


def test_grpo_loss_matches_float64_reference():
    logps, old, ref, mask, rewards = _batch(spread=2.0)
    adv = group_advantages(rewards, G)
    eps, beta = 0.2, 0.05
    loss, stats = grpo(logps, old, adv, mask, ref_logps=ref, beta=beta, clip_eps=eps)
    per_answer, cut, tokens = [], 0, 0
    for i in range(logps.shape[0]):
        a = float(adv[i])
        vals = []
        for t in range(logps.shape[1]):
            if not mask[i, t]:
                continue
            ratio = math.exp(float(logps[i, t] - old[i, t]))
            vals.append(-min(ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a))
            cut += (ratio > 1 + eps and a > 0) or (ratio < 1 - eps and a < 0)
            tokens += 1
        per_answer.append(sum(vals) / len(vals))
    pg = sum(per_answer) / len(per_answer)
    kl = _ref_k3(logps.numpy(), ref.numpy(), mask.numpy())
    assert stats["pg_loss"] == pytest.approx(pg, rel=1e-10)
    assert loss.item() == pytest.approx(pg + beta * kl, rel=1e-10)
    assert stats["clip_frac"] == pytest.approx(cut / tokens) and 0 < cut < tokens


def test_1_first_update_is_group_policy_gradient():
    # tiny softmax policy over a 6-token vocabulary: logps depend on theta; old = logps.detach()
    torch.manual_seed(0)
    n, t, vocab = 2 * G, 5, 6
    theta = torch.randn(t, vocab, requires_grad=True)
    tokens = torch.randint(0, vocab, (n, t))
    mask = torch.ones(n, t)
    mask[0, 4:] = 0

    def policy_logps():
        return torch.log_softmax(theta, -1)[torch.arange(t), tokens]  # (N, T)

    rewards = torch.tensor([1.0, 0.0, 2.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    adv = group_advantages(rewards, G)
    logps = policy_logps()
    loss, stats = paper(logps, logps.detach(), adv, mask)
    loss.backward()
    got = theta.grad.clone()
    assert torch.isfinite(loss) and torch.isfinite(got).all()
    assert stats["floored_frac"] == 1.0 and stats["pred_adv_std"] == 0.0
    theta.grad = None
    rho = (policy_logps() * mask).sum(1)  # (N,) rho's gradient equals that of sum log pi
    (adv * rho).sum().backward()
    pg = theta.grad.clone()
    # d loss = -(2 / (N * eps)) * sum_i A_i d rho_i   (eps = 1e-4 floor)
    torch.testing.assert_close(got, -(2.0 / (n * 1e-4)) * pg, rtol=1e-4, atol=1e-3)
    cos = torch.nn.functional.cosine_similarity(got.flatten(), -pg.flatten(), dim=0)
    assert cos > 0.9999


def test_2_all_equal_rewards_give_zero_advantage_and_no_nan():
    rewards = torch.tensor([0.1] * G + [0.7] * G + [2.0] * G + [0.0, 1.0, 0.0, 0.0])
    adv = group_advantages(rewards, G)
    assert (adv[: 3 * G] == 0).all()  # exactly, despite 0.1 and 0.7 not being binary fractions
    assert (adv[3 * G:] != 0).all()
    assert (group_advantages(torch.tensor([0.3, 0.3]), 1) == 0).all()  # G = 1
    # G = 8: float32 mean(8 x 0.1) != 0.1, a naive r - mean would leave ~1e-8 / eps = 1e-4
    eight = torch.tensor([0.1] * 8 + [0.7] * 8 + [1.3] * 8)
    assert (group_advantages(eight, 8) == 0).all()
    rho8 = eight[:, None]  # equal log-ratios: Ahat exactly 0 too, loss = mean A^2 = 0
    assert paper(rho8, torch.zeros_like(rho8), torch.zeros(24), torch.ones_like(rho8), 8)[0].item() == 0.0
    logps, old, ref, mask, _ = _batch(n_groups=4, dtype=torch.float32)
    logps.requires_grad_(True)
    loss, stats = paper(logps, old, adv, mask, ref_logps=ref, beta=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logps.grad).all()
    assert stats["zero_adv_ratio"] == 0.75
    assert grpo(logps, old, adv, mask)[1]["zero_adv_ratio"] == 0.75
    assert reg(logps, old, adv, mask)[1]["zero_adv_ratio"] == 0.75


@pytest.mark.parametrize("which", ["reg", "grpo"])
def test_3_padding_changes_nothing(which):
    logps, old, ref, mask, rewards = _batch(dtype=torch.float32)
    adv = group_advantages(rewards, G)
    pad = 3
    mask_p = torch.cat([mask, torch.zeros(mask.shape[0], pad)], 1)
    junk = torch.tensor([float("nan"), float("-inf"), 1e4]).expand(mask.shape[0], pad)
    lp_p = torch.cat([logps, junk], 1).requires_grad_(True)
    old_p, ref_p = torch.cat([old, -junk], 1), torch.cat([ref, junk], 1)
    # inside the real width, padding (mask 0) also holds junk
    lp_p.data[1, 3], old_p[6, 2], ref_p[6, 4] = 50.0, float("nan"), -1e4
    lp = logps.clone().requires_grad_(True)
    fn = (lambda *a: paper(*a[:4], ref_logps=a[4], beta=0.1)) if which == "reg" else \
        (lambda *a: grpo(*a[:4], ref_logps=a[4], beta=0.1))
    loss, stats = fn(lp, old, adv, mask, ref)
    loss_p, stats_p = fn(lp_p, old_p, adv, mask_p, ref_p)
    loss.backward()
    loss_p.backward()
    assert loss_p.item() == pytest.approx(loss.item(), rel=1e-6)
    assert stats_p == pytest.approx(stats, rel=1e-6)
    torch.testing.assert_close(lp_p.grad[:, :logps.shape[1]] * mask, lp.grad * mask)
    assert (lp_p.grad[mask_p == 0] == 0).all()


def test_4_per_group_constant_changes_nothing():
    logps, old, ref, mask, rewards = _batch(dtype=torch.float32)
    adv = group_advantages(rewards, G)
    lp = logps.clone().requires_grad_(True)
    loss, _ = paper(lp, old, adv, mask)
    loss.backward()
    shift = torch.tensor([37.0, -5.5, 0.25]).repeat_interleave(G)  # log Z(x) per prompt
    old_shifted = old.clone()
    old_shifted[:, 0] -= shift  # rho_i += shift of its group
    lp2 = logps.clone().requires_grad_(True)
    loss2, _ = paper(lp2, old_shifted, adv, mask)
    loss2.backward()
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(lp2.grad, lp.grad, rtol=1e-4, atol=1e-5)


def test_5_reg_grpo_has_gradient_where_grpo_clip_cuts():
    n, t = G, 3
    old = torch.full((n, t), -2.0)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    # ratio 1.5 where A > 0 and 0.5 where A < 0: clipping cuts every token's gradient
    logps = (old + torch.where(adv > 0, math.log(1.5), math.log(0.5))[:, None]).requires_grad_(True)
    mask = torch.ones(n, t)
    loss, stats = grpo(logps, old, adv, mask, clip_eps=0.2)
    loss.backward()
    assert stats["clip_frac"] == 1.0 and (logps.grad == 0).all()
    logps.grad = None
    adv_ranked = torch.tensor([1.5, -0.5, 0.5, -1.5])  # rho ranks the answers differently
    loss, _ = paper(logps, old, adv_ranked / adv_ranked.std(unbiased=False), mask)
    loss.backward()
    assert loss.item() > 0.01 and logps.grad.abs().sum() > 0.01


def test_6_group_loss_is_two_minus_two_pearson():
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        rho = torch.randn(G, dtype=torch.float64, generator=g) * 2
        rewards = torch.rand(G, dtype=torch.float64, generator=g) * 2
        adv = group_advantages(rewards, G, eps=0.0)  # exact z-scores
        logps = rho[:, None].clone()
        loss, _ = paper(logps, torch.zeros_like(logps), adv, torch.ones_like(logps))
        pearson = np.corrcoef(rho.numpy(), rewards.numpy())[0, 1]
        assert loss.item() == pytest.approx(2 * (1 - pearson), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("c", [1e-2, 1.0, 30.0])
def test_zero_loss_for_positive_multiple_plus_group_constant(c):
    rewards = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 0.0, 0.0, 0.0])
    const = torch.tensor([3.0, -40.0]).repeat_interleave(G)
    for eps, tol in ((1e-4, 1e-6), (0.0, 1e-10)):
        adv = group_advantages(rewards.double(), G, eps=eps)
        rho = c * adv + const
        mask = torch.ones(2 * G, 2)
        logps = torch.stack([rho / 2, rho / 2], 1)
        loss, _ = paper(logps, torch.zeros_like(logps), adv, mask)
        assert loss.item() < tol
    # float32: same, up to rounding
    adv = group_advantages(rewards, G)
    logps = (c * adv + const.float())[:, None]
    loss, _ = paper(logps, torch.zeros_like(logps), adv, torch.ones_like(logps))
    assert loss.item() < 1e-5


def test_7_gradcheck_float64():
    logps, old, ref, mask, rewards = _batch(n_groups=2, t=4)
    adv = group_advantages(rewards, G)
    lp = logps.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: paper(x, old, adv, mask, ref_logps=ref, beta=0.1)[0], (lp,))
    assert torch.autograd.gradcheck(
        lambda x: grpo(x, old, adv, mask, ref_logps=ref, beta=0.1, clip_eps=0.2)[0], (lp,))
    # floor regime (std rho < eps): Ahat is linear there
    lp0 = (old + 1e-6 * torch.randn_like(old)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: paper(x, old, adv, mask)[0], (lp0,), eps=1e-9)


def test_8_bf16_inputs_give_float32_loss():
    logps, old, ref, mask, rewards = _batch(dtype=torch.float32)
    adv = group_advantages(rewards, G)
    lp16 = logps.bfloat16().requires_grad_(True)
    args16 = (old.bfloat16(), adv.bfloat16(), mask)
    for fn, extra in ((paper, ()), (grpo, ())):
        loss, _ = fn(lp16, *args16, *extra, ref_logps=ref.bfloat16(), beta=0.1)
        assert loss.dtype == torch.float32
        want, _ = fn(lp16.detach().float(), old.bfloat16().float(), adv.bfloat16().float(), mask, *extra,
                     ref_logps=ref.bfloat16().float(), beta=0.1)
        assert loss.item() == pytest.approx(want.item(), rel=1e-6)
        loss.backward()
        assert lp16.grad.dtype == torch.bfloat16 and torch.isfinite(lp16.grad.float()).all()
        lp16.grad = None
    assert group_advantages(torch.tensor([0.0, 1.0], dtype=torch.bfloat16), 2).dtype == torch.float32


def test_kl_is_k3_and_zero_at_reference():
    logps = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    mask = torch.ones(1, 2)
    adv = torch.zeros(1)
    _, stats = grpo(logps, logps, adv, mask, 1, ref_logps=ref)
    hand = ((math.exp(-0.5) + 0.5 - 1) + (math.exp(1.0) - 1.0 - 1)) / 2
    assert stats["kl"] == pytest.approx(hand, rel=1e-6)
    assert grpo(logps, logps, adv, mask, 1, ref_logps=logps)[1]["kl"] == 0.0
    # beta = 0 or no ref: the KL is not added
    l0, _ = grpo(logps, logps, adv, mask, 1, ref_logps=ref, beta=0.0)
    l1, _ = grpo(logps, logps, adv, mask, 1, ref_logps=ref, beta=0.5)
    assert l0.item() == pytest.approx(0.0) and l1.item() == pytest.approx(0.5 * hand, rel=1e-6)


def test_stats_keys_are_floats():
    logps, old, ref, mask, rewards = _batch(dtype=torch.float32)
    adv = group_advantages(rewards, G)
    _, s = paper(logps, old, adv, mask, ref_logps=ref, beta=0.1)
    assert {"loss", "reg_loss", "kl", "zero_adv_ratio", "pred_adv_std"} <= set(s)
    _, s2 = grpo(logps, old, adv, mask, ref_logps=ref, beta=0.1)
    assert {"loss", "pg_loss", "kl", "clip_frac", "zero_adv_ratio"} <= set(s2)
    assert all(type(v) is float for v in list(s.values()) + list(s2.values()))
    rho = ((logps - old) * mask).sum(1).view(-1, G)
    assert s["pred_adv_std"] == pytest.approx(rho.std(1, unbiased=False).mean().item(), rel=1e-5)


def test_bad_shapes_raise_value_error_naming_shapes():
    logps, old, ref, mask, rewards = _batch(dtype=torch.float32)
    adv = group_advantages(rewards, G)
    with pytest.raises(ValueError, match=r"group_size=5 does not divide N=12"):
        reg_grpo_loss(logps, old, adv, mask, ids(12), group_size=5)
    with pytest.raises(ValueError, match=r"group_size=5 does not divide N=12"):
        group_advantages(rewards, 5)
    with pytest.raises(ValueError, match=r"old_logps.*\(12, 5\).*\(12, 4\)"):
        paper(logps, old[:, :4], adv, mask)
    with pytest.raises(ValueError, match=r"advantages must be \(N,\) = \(12,\), got \(11,\)"):
        grpo(logps, old, adv[:11], mask)
    with pytest.raises(ValueError, match=r"mask.*got \(12, 6\)"):
        grpo(logps, old, adv, torch.ones(12, 6))
    with pytest.raises(ValueError, match=r"ref_logps"):
        paper(logps, old, adv, mask, ref_logps=ref[:6])
    with pytest.raises(ValueError, match=r"logps must be \(N, T\), got shape \(12,\)"):
        paper(logps[:, 0], old[:, 0], adv, mask[:, 0])
    with pytest.raises(ValueError, match=r"rewards must be \(N,\)"):
        group_advantages(rewards.view(3, 4), G)
    with pytest.raises(ValueError, match=r"positive int"):
        reg_grpo_loss(logps, old, adv, mask, ids(12), group_size=0)
    with pytest.raises(TypeError):  # the group size is no longer positional: ids are required
        reg_grpo_loss(logps, old, adv, mask, G)
    with pytest.raises(ValueError, match=r"group_ids must be an integer tensor of shape \(N,\) = \(12,\), got int"):
        reg_grpo_loss(logps, old, adv, mask, G, group_size=G)
    with pytest.raises(ValueError, match=r"form must be 'scaled' or 'paper'"):
        reg(logps, old, adv, mask, form="literal")


# ----------------------------------------------------------------------------- groups

def test_group_ids_checked_in_every_loss():
    logps, old, ref, mask, rewards = _batch(dtype=torch.float32)
    adv = group_advantages(rewards, G)
    calls = [lambda i: reg_grpo_loss(logps, old, adv, mask, i, group_size=G),
             lambda i: grpo_loss(logps, old, adv, mask, i, group_size=G),
             lambda i: rebel_loss(logps, old, rewards, mask, i, group_size=G)]
    shuffled = ids(12)[torch.tensor([0, 4, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11])]  # TRL-style shuffle
    for call in calls:
        call(ids(12))
        call(ids(12) * 7 + 3)  # any distinct ids
        with pytest.raises(ValueError, match=r"rows 0\.\.3 hold group ids \[0, 1, 0, 0\].*sort the rows"):
            call(shuffled)
        with pytest.raises(ValueError, match=r"appears in two separate runs"):
            call(torch.tensor([0] * 4 + [1] * 4 + [0] * 4))
        with pytest.raises(ValueError, match=r"integer tensor"):
            call(ids(12).float())
        with pytest.raises(ValueError, match=r"shape \(N,\) = \(12,\), got \(11,\)"):
            call(ids(11))
    # a micro-batch holding half of each group of 4: ids run in pairs
    with pytest.raises(ValueError, match=r"rows 0\.\.3 hold group ids \[0, 0, 1, 1\]"):
        check_groups(torch.arange(12) // 2, 12, G)
    check_groups(torch.arange(12) // 2, 12, 2)


def test_grpo_zero_adv_ratio_counts_flat_groups_not_zero_answers():
    # group 0 is mixed but two answers sit at its mean (A = 0): they are not a flat group
    rewards = torch.tensor([0.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, G)
    assert (adv[[1, 3]] == 0).all()
    logps, old, _, mask, _ = _batch(n_groups=2, dtype=torch.float32)
    assert grpo(logps, old, adv, mask)[1]["zero_adv_ratio"] == 0.5
    assert reg(logps, old, adv, mask)[1]["zero_adv_ratio"] == 0.5
    assert rebel_loss(logps, old, rewards, mask, ids(8), group_size=G)[1]["zero_adv_ratio"] == 0.5
    # a float mean can leave ~1e-4 in a flat group (TRL's advantages): still flat
    assert grpo(logps, old, adv + torch.tensor([0.0] * 4 + [1e-4] * 4), mask)[1]["zero_adv_ratio"] == 0.5


# ----------------------------------------------------------------------------- scaled form

def _ref_scaled(rho, adv, eps):
    """float64 reference of the scaled form on plain lists: (loss, dL/drho) with the weights held
    constant, the gradient from the closed form -(1/N) (A_j - p z_j) (above the floor) or
    -(1/N) (A_j - z_j) (at or below it), flat groups contributing nothing."""
    n = len(rho)
    loss, grad = 0.0, [0.0] * n
    for g0 in range(0, n, G):
        r, a = rho[g0:g0 + G], adv[g0:g0 + G]
        if all(abs(x) <= 1e-3 for x in a):
            continue
        m = sum(r) / G
        s = math.sqrt(sum((x - m) ** 2 for x in r) / G)
        sf = max(s, eps)
        z = [(x - m) / sf for x in r]
        loss += sf / 2 * sum((ai - zi) ** 2 for ai, zi in zip(a, z)) / n
        p = sum(ai * zi for ai, zi in zip(a, z)) / G if s > eps else 1.0
        for j in range(G):
            grad[g0 + j] = -(a[j] - p * z[j]) / n
    return loss, grad


@pytest.mark.parametrize("spread", [0.0, 3e-5, 2e-4, 0.5])  # rho = 0, below / just above the floor, well above
def test_scaled_form_matches_float64_reference_with_gradient(spread):
    g = torch.Generator().manual_seed(7)
    n, t = 3 * G, 4
    old = -torch.rand(n, t, generator=g, dtype=torch.float64) * 2
    rho_target = spread * torch.randn(n, generator=g, dtype=torch.float64)
    logps = (old + rho_target[:, None] / t).requires_grad_(True)
    mask = torch.ones(n, t)
    rewards = torch.tensor([0.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    adv = group_advantages(rewards, G)
    loss, stats = reg_sum(logps, old, adv, mask)
    loss.backward()
    rho = ((logps - old) * mask).sum(1).tolist()
    want_loss, want_grad = _ref_scaled(rho, adv.tolist(), 1e-4)
    assert loss.item() == pytest.approx(want_loss, rel=1e-9, abs=1e-15)
    # rho is a sum over tokens: each token of row j gets dL/drho_j
    torch.testing.assert_close(logps.grad, torch.tensor(want_grad, dtype=torch.float64)[:, None].expand(n, t),
                               rtol=1e-7, atol=1e-12)
    assert stats["zero_adv_ratio"] == pytest.approx(1 / 3)
    assert (logps.grad[G:2 * G] == 0).all()  # the flat group is left out
    if spread == 0.0:  # rho = 0: REINFORCE with the group-normalised advantage, -(1/N) A_j
        torch.testing.assert_close(logps.grad[:, 0], -adv / n, rtol=1e-12, atol=0)
        assert stats["floored_frac"] == 1.0 and stats["reg_loss"] == pytest.approx(
            sum(1e-4 / 2 * float(a) ** 2 for a in adv) / n)


def test_scaled_form_at_rho_zero_is_grpo_gradient_with_token_mean_and_paper_form_is_2_over_eps_times_it():
    # tiny softmax policy; old = logps.detach(); rows of different lengths
    torch.manual_seed(0)
    n, t, vocab = 2 * G, 5, 6
    theta = torch.randn(t, vocab, requires_grad=True)
    tokens = torch.randint(0, vocab, (n, t))
    mask = torch.ones(n, t)
    mask[0, 3:] = 0
    mask[5, 1:] = 0

    def grad_of(fn):
        theta.grad = None
        logps = torch.log_softmax(theta, -1)[torch.arange(t), tokens]  # (N, T)
        fn(logps, logps.detach()).backward()
        return theta.grad.clone()

    adv = group_advantages(torch.tensor([1.0, 0.0, 2.0, 0.0, 1.0, 1.0, 0.0, 1.0]), G)
    g_grpo = grad_of(lambda lp, old: grpo(lp, old, adv, mask)[0])
    g_scaled_mean = grad_of(lambda lp, old: reg(lp, old, adv, mask)[0])          # the default: token mean
    torch.testing.assert_close(g_scaled_mean, g_grpo, rtol=1e-5, atol=1e-7)
    # sum: -(1/N) sum_j A_j grad sum_t logp_jt;  paper: 2 / eps times that
    g_pg = grad_of(lambda lp, old: -(adv * (lp * mask).sum(1)).sum() / n)
    torch.testing.assert_close(grad_of(lambda lp, old: reg_sum(lp, old, adv, mask)[0]), g_pg, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad_of(lambda lp, old: paper(lp, old, adv, mask)[0]), 2 / 1e-4 * g_pg,
                               rtol=1e-4, atol=1e-3)


def test_scaled_form_keeps_the_stationary_points_and_the_ranking_direction():
    rewards = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    adv = group_advantages(rewards, G, eps=0.0)
    mask = torch.ones(2 * G, 1, dtype=torch.float64)
    for c in (1e-3, 0.7):  # rho = c * A + const: loss and gradient 0 in both forms
        logps = (c * adv + 5.0)[:, None].clone().requires_grad_(True)
        for fn in (reg, paper):
            logps.grad = None
            loss, _ = fn(logps, torch.zeros_like(logps), adv, mask)
            loss.backward()
            assert loss.item() < 1e-20 and logps.grad.abs().max() < 1e-9
    # elsewhere the two gradients point the same way in each group (a positive per-group factor)
    g = torch.Generator().manual_seed(1)
    logps = (0.3 * torch.randn(2 * G, 1, generator=g, dtype=torch.float64)).requires_grad_(True)
    grads = []
    for fn in (reg, paper):
        logps.grad = None
        fn(logps, torch.zeros_like(logps), adv, mask)[0].backward()
        grads.append(logps.grad.view(2, G).clone())
    for a, b in zip(*grads):
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 1 - 1e-12


def test_paper_form_flat_group_below_floor_pulls_hard_scaled_form_ignores_it():
    rho = torch.tensor([3e-6, -3e-6, 1e-6, -1e-6, 0.3, -0.2, 0.1, -0.2], dtype=torch.float64)
    adv = group_advantages(torch.tensor([1.0] * 4 + [1.0, 0.0, 1.0, 0.0]), G).double()
    out = {}
    for name, fn in (("paper", paper), ("scaled", reg)):
        logps = rho[:, None].clone().requires_grad_(True)
        fn(logps, torch.zeros_like(logps), adv, torch.ones_like(logps))[0].backward()
        out[name] = logps.grad[:, 0]
    # paper: (2 / N) z_j / eps with z_j = rho_j / eps, e.g. row 0: 2/8 * 0.03 / 1e-4 = 75
    assert out["paper"][0].item() == pytest.approx(2 / 8 * 3e-6 / 1e-8, rel=1e-9)
    assert out["paper"][:G].abs().max() > 10 * out["paper"][G:].abs().max()
    assert (out["scaled"][:G] == 0).all() and out["scaled"][G:].abs().max() > 0


def test_scaled_gradcheck_float64_where_the_weight_is_constant():
    # the weight is detached: gradcheck holds with the weight's own gradient left out, i.e. on the
    # loss as a function of logps with std held at its value; check it in the floor regime where the
    # weight is exactly eps and so truly constant
    logps, old, ref, mask, rewards = _batch(n_groups=2, t=4)
    adv = group_advantages(rewards, G)
    lp0 = (old + 1e-6 * torch.randn_like(old)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: reg(x, old, adv, mask, ref_logps=ref, beta=0.1)[0], (lp0,), eps=1e-9)


def test_scaled_loss_and_kl_against_float64_reference_with_padding_and_bf16():
    logps, old, ref, mask, rewards = _batch()
    adv = group_advantages(rewards, G)
    loss, stats = reg_sum(logps, old, adv, mask, ref_logps=ref, beta=0.1)
    rho = ((logps - old) * mask).sum(1).tolist()
    want, _ = _ref_scaled(rho, adv.tolist(), 1e-4)
    kl = _ref_k3(logps.numpy(), ref.numpy(), mask.numpy())
    assert stats["reg_loss"] == pytest.approx(want, rel=1e-10)
    assert loss.item() == pytest.approx(want + 0.1 * kl, rel=1e-10)
    informative = [i for i in range(12) if any(abs(float(a)) > 1e-3 for a in adv[i // G * G:i // G * G + G])]
    mse = paper(logps, old, adv, mask)[1]["mse"]
    assert stats["mse"] == pytest.approx(mse) and mse == pytest.approx(
        sum((float(adv[i]) - _z(rho, i)) ** 2 for i in informative) / len(informative), rel=1e-10)
    lp16 = logps.float().bfloat16().requires_grad_(True)
    l16, _ = reg_sum(lp16, old.bfloat16(), adv.float(), mask, ref_logps=ref.bfloat16(), beta=0.1)
    assert l16.dtype == torch.float32
    l16.backward()
    assert lp16.grad.dtype == torch.bfloat16 and torch.isfinite(lp16.grad.float()).all()


def _z(rho, i):
    grp = rho[i // G * G:i // G * G + G]
    m = sum(grp) / G
    return (rho[i] - m) / max(math.sqrt(sum((r - m) ** 2 for r in grp) / G), 1e-4)


# ----------------------------------------------------------------------------- REBEL

def _ref_rebel(rho, rewards, eta):
    total, count = 0.0, 0
    for g0 in range(0, len(rho), G):
        for i in range(g0, g0 + G):
            for j in range(i + 1, g0 + G):
                total += ((rho[i] - rho[j]) / eta - (rewards[i] - rewards[j])) ** 2
                count += 1
    return total / count


@pytest.mark.parametrize("spread,eta", [(0.0, 1.0), (1.0, 1.0), (1.0, 0.3)])
def test_rebel_matches_float64_brute_force_with_gradient(spread, eta):
    logps, old, ref, mask, rewards = _batch(spread=spread) if spread else _batch()
    if spread == 0.0:
        logps = old.clone()
    lp = logps.clone().requires_grad_(True)
    loss, stats = rebel_loss(lp, old, rewards, mask, ids(12), group_size=G, eta=eta, ref_logps=ref, beta=0.1)
    loss.backward()
    rho = ((logps - old) * mask).sum(1).tolist()
    r = rewards.tolist()
    kl = _ref_k3(logps.numpy(), ref.numpy(), mask.numpy())
    assert stats["reg_loss"] == pytest.approx(_ref_rebel(rho, r, eta), rel=1e-10)
    assert loss.item() == pytest.approx(_ref_rebel(rho, r, eta) + 0.1 * kl, rel=1e-10)
    # gradient of the regression term by central differences on the brute force, per row's rho
    lp2 = logps.clone().requires_grad_(True)
    rebel_loss(lp2, old, rewards, mask, ids(12), group_size=G, eta=eta)[0].backward()
    h = 1e-6
    for j in range(12):
        up, down = list(rho), list(rho)
        up[j] += h
        down[j] -= h
        d = (_ref_rebel(up, r, eta) - _ref_rebel(down, r, eta)) / (2 * h)
        assert lp2.grad[j][mask[j] > 0] == pytest.approx([d] * int(mask[j].sum()), rel=1e-6, abs=1e-9)
        assert (lp2.grad[j][mask[j] == 0] == 0).all()
    if spread == 0.0:  # rho = 0: -(4 G / ((G - 1) eta N)) (r_j - mean_g r)
        centred = rewards.view(-1, G) - rewards.view(-1, G).mean(1, keepdim=True)
        torch.testing.assert_close(lp2.grad[:, 0], -(4 * G / ((G - 1) * eta * 12)) * centred.view(-1))


def test_rebel_needs_pairs_and_raw_reward_shape():
    logps, old, _, mask, rewards = _batch(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"group_size must be >= 2"):
        rebel_loss(logps, old, rewards, mask, torch.arange(12), group_size=1)
    with pytest.raises(ValueError, match=r"rewards must be \(N,\) = \(12,\)"):
        rebel_loss(logps, old, rewards[:4], mask, ids(12), group_size=G)


def test_loss_defaults_are_the_ones_train_py_trains_with():
    """A copy-pasted call without options trains as train.py does: same rho, form, floor, beta, clip."""
    import inspect
    import train
    reg_defaults = inspect.signature(reg_grpo_loss).parameters
    assert reg_defaults["token_mean"].default is train.rho_token_mean is True
    assert reg_defaults["form"].default == train.reg_form == "scaled"
    assert reg_defaults["eps"].default == train.std_floor
    for fn in (reg_grpo_loss, grpo_loss, rebel_loss):
        assert inspect.signature(fn).parameters["beta"].default == train.beta
    assert inspect.signature(grpo_loss).parameters["clip_eps"].default == train.clip_eps
    assert inspect.signature(rebel_loss).parameters["eta"].default == train.rebel_eta
    # and the default call is the token-mean scaled loss with train.py's beta, not the sum
    logps, old, ref, mask, rewards = _batch()
    adv = group_advantages(rewards, G)
    plain = reg_grpo_loss(logps, old, adv, mask, ids(12), group_size=G, ref_logps=ref)[0].item()
    spelled = reg(logps, old, adv, mask, ref_logps=ref, beta=0.04, eps=1e-4, token_mean=True, form="scaled")[0]
    assert plain == spelled.item() != reg_sum(logps, old, adv, mask, ref_logps=ref, beta=0.04)[0].item()


def test_eps_factor_on_the_prediction_only_scales_the_gradient():
    """eps * Ahat in place of Ahat (one summary's form): gradient eps times, same minimiser (float64)."""
    g = torch.Generator().manual_seed(5)
    rho = (0.5 * torch.randn(G, generator=g, dtype=torch.float64)).requires_grad_(True)
    adv = group_advantages(torch.tensor([0.0, 1.0, 2.0, 1.0], dtype=torch.float64), G, eps=0.0)

    def loss(r, e):
        z = (r - r.mean()) / (r - r.mean()).pow(2).mean().sqrt()
        return (adv - e * z).pow(2).mean()
    grads = [torch.autograd.grad(loss(rho, e), rho)[0] for e in (1.0, 0.3)]
    torch.testing.assert_close(grads[1], 0.3 * grads[0], rtol=1e-12, atol=1e-15)
    # the paper form (eps = 1) is this loss
    assert paper(rho[:, None], torch.zeros(G, 1, dtype=torch.float64), adv, torch.ones(G, 1))[0].item() == \
        pytest.approx(loss(rho, 1.0).item(), rel=1e-12)


def test_group_ids_are_optional_and_checked_when_given():
    """A paster can leave out group_ids (rows are read as contiguous groups either way); given, they are checked."""
    gen = torch.Generator().manual_seed(3)
    N, T, G = 8, 5, 4
    logps = torch.randn(N, T, generator=gen, requires_grad=True)
    old = logps.detach() + 0.1 * torch.randn(N, T, generator=gen)
    adv = group_advantages(torch.tensor([0., 1, 2, 1, 1, 1, 1, 1]), G)
    mask = torch.ones(N, T)
    plain, _ = reg_grpo_loss(logps, old, adv, mask, group_size=G)
    checked, _ = reg_grpo_loss(logps, old, adv, mask, torch.arange(N) // G, group_size=G)
    assert plain.item() == checked.item()
    with pytest.raises(ValueError, match="expected 4 rows of one group"):
        reg_grpo_loss(logps, old, adv, mask, torch.tensor([0, 1] * 4), group_size=G)
    with pytest.raises(ValueError, match="does not divide"):
        reg_grpo_loss(logps, old, adv, mask, group_size=3)


def test_reg_grpo_file_needs_only_torch():
    import ast
    import reg_grpo
    tree = ast.parse(open(reg_grpo.__file__).read())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"torch"}
