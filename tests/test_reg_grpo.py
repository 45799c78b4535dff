import math

import numpy as np
import pytest
import torch

from reg_grpo import grpo_loss, group_advantages, reg_grpo_loss

G = 4


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
        loss, stats = reg_grpo_loss(logps, old, adv, mask, G, ref_logps=r, beta=beta)
        want = _ref_reg_grpo(logps, old, adv, mask, ref, beta, 1e-4)
        assert loss.item() == pytest.approx(want, rel=1e-10)
        assert stats["kl"] == (pytest.approx(_ref_k3(logps.numpy(), ref.numpy(), mask.numpy()), rel=1e-10)
                               if r is not None else 0.0)
        assert stats["reg_loss"] == pytest.approx(_ref_reg_grpo(logps, old, adv, mask, ref, 0.0, 1e-4), rel=1e-10)


def test_token_mean_rho_matches_float64_reference():
    logps, old, ref, mask, rewards = _batch()  # rows 1 and 6 are shorter: sum and mean differ
    adv = group_advantages(rewards, G)
    loss, _ = reg_grpo_loss(logps, old, adv, mask, G, ref_logps=ref, beta=0.1, token_mean=True)
    assert loss.item() == pytest.approx(_ref_reg_grpo(logps, old, adv, mask, ref, 0.1, 1e-4, token_mean=True),
                                        rel=1e-10)
    assert loss.item() != pytest.approx(_ref_reg_grpo(logps, old, adv, mask, ref, 0.1, 1e-4), rel=1e-6)
    full = torch.ones_like(mask)  # equal lengths: the z-score cannot tell a sum from a mean
    assert (reg_grpo_loss(logps, old, adv, full, G, token_mean=True)[0].item()
            == pytest.approx(reg_grpo_loss(logps, old, adv, full, G)[0].item(), rel=1e-9))


def test_grpo_loss_matches_float64_reference():
    logps, old, ref, mask, rewards = _batch(spread=2.0)
    adv = group_advantages(rewards, G)
    eps, beta = 0.2, 0.05
    loss, stats = grpo_loss(logps, old, adv, mask, ref_logps=ref, beta=beta, clip_eps=eps)
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
    loss, stats = reg_grpo_loss(logps, logps.detach(), adv, mask, G)
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
    assert reg_grpo_loss(rho8, torch.zeros_like(rho8), torch.zeros(24), torch.ones_like(rho8), 8)[0].item() == 0.0
    logps, old, ref, mask, _ = _batch(n_groups=4, dtype=torch.float32)
    logps.requires_grad_(True)
    loss, stats = reg_grpo_loss(logps, old, adv, mask, G, ref_logps=ref, beta=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logps.grad).all()
    assert stats["zero_adv_ratio"] == 0.75
    _, gstats = grpo_loss(logps, old, adv, mask, group_size=G)
    assert gstats["zero_adv_ratio"] == 0.75
    assert grpo_loss(logps, old, adv, mask)[1]["zero_adv_ratio"] == 0.75  # per answer, same here


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
    fn = (lambda *a: reg_grpo_loss(*a[:4], G, ref_logps=a[4], beta=0.1)) if which == "reg" else \
        (lambda *a: grpo_loss(*a[:4], ref_logps=a[4], beta=0.1))
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
    loss, _ = reg_grpo_loss(lp, old, adv, mask, G)
    loss.backward()
    shift = torch.tensor([37.0, -5.5, 0.25]).repeat_interleave(G)  # log Z(x) per prompt
    old_shifted = old.clone()
    old_shifted[:, 0] -= shift  # rho_i += shift of its group
    lp2 = logps.clone().requires_grad_(True)
    loss2, _ = reg_grpo_loss(lp2, old_shifted, adv, mask, G)
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
    loss, stats = grpo_loss(logps, old, adv, mask, clip_eps=0.2)
    loss.backward()
    assert stats["clip_frac"] == 1.0 and (logps.grad == 0).all()
    logps.grad = None
    adv_ranked = torch.tensor([1.5, -0.5, 0.5, -1.5])  # rho ranks the answers differently
    loss, _ = reg_grpo_loss(logps, old, adv_ranked / adv_ranked.std(unbiased=False), mask, G)
    loss.backward()
    assert loss.item() > 0.01 and logps.grad.abs().sum() > 0.01


def test_6_group_loss_is_two_minus_two_pearson():
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        rho = torch.randn(G, dtype=torch.float64, generator=g) * 2
        rewards = torch.rand(G, dtype=torch.float64, generator=g) * 2
        adv = group_advantages(rewards, G, eps=0.0)  # exact z-scores
        logps = rho[:, None].clone()
        loss, _ = reg_grpo_loss(logps, torch.zeros_like(logps), adv, torch.ones_like(logps), G)
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
        loss, _ = reg_grpo_loss(logps, torch.zeros_like(logps), adv, mask, G)
        assert loss.item() < tol
    # float32: same, up to rounding
    adv = group_advantages(rewards, G)
    logps = (c * adv + const.float())[:, None]
    loss, _ = reg_grpo_loss(logps, torch.zeros_like(logps), adv, torch.ones_like(logps), G)
    assert loss.item() < 1e-5


def test_7_gradcheck_float64():
    logps, old, ref, mask, rewards = _batch(n_groups=2, t=4)
    adv = group_advantages(rewards, G)
    lp = logps.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: reg_grpo_loss(x, old, adv, mask, G, ref_logps=ref, beta=0.1)[0], (lp,))
    assert torch.autograd.gradcheck(
        lambda x: grpo_loss(x, old, adv, mask, ref_logps=ref, beta=0.1, clip_eps=0.2)[0], (lp,))
    # floor regime (std rho < eps): Ahat is linear there
    lp0 = (old + 1e-6 * torch.randn_like(old)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: reg_grpo_loss(x, old, adv, mask, G)[0], (lp0,), eps=1e-9)


def test_8_bf16_inputs_give_float32_loss():
    logps, old, ref, mask, rewards = _batch(dtype=torch.float32)
    adv = group_advantages(rewards, G)
    lp16 = logps.bfloat16().requires_grad_(True)
    args16 = (old.bfloat16(), adv.bfloat16(), mask)
    for fn, extra in ((reg_grpo_loss, (G,)), (grpo_loss, ())):
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
    _, stats = grpo_loss(logps, logps, adv, mask, ref_logps=ref)
    hand = ((math.exp(-0.5) + 0.5 - 1) + (math.exp(1.0) - 1.0 - 1)) / 2
    assert stats["kl"] == pytest.approx(hand, rel=1e-6)
    assert grpo_loss(logps, logps, adv, mask, ref_logps=logps)[1]["kl"] == 0.0
    # beta = 0 or no ref: the KL is not added
    l0, _ = grpo_loss(logps, logps, adv, mask, ref_logps=ref, beta=0.0)
    l1, _ = grpo_loss(logps, logps, adv, mask, ref_logps=ref, beta=0.5)
    assert l0.item() == pytest.approx(0.0) and l1.item() == pytest.approx(0.5 * hand, rel=1e-6)


def test_stats_keys_are_floats():
    logps, old, ref, mask, rewards = _batch(dtype=torch.float32)
    adv = group_advantages(rewards, G)
    _, s = reg_grpo_loss(logps, old, adv, mask, G, ref_logps=ref, beta=0.1)
    assert {"loss", "reg_loss", "kl", "zero_adv_ratio", "pred_adv_std"} <= set(s)
    _, s2 = grpo_loss(logps, old, adv, mask, ref_logps=ref, beta=0.1)
    assert {"loss", "pg_loss", "kl", "clip_frac", "zero_adv_ratio"} <= set(s2)
    assert all(type(v) is float for v in list(s.values()) + list(s2.values()))
    rho = ((logps - old) * mask).sum(1).view(-1, G)
    assert s["pred_adv_std"] == pytest.approx(rho.std(1, unbiased=False).mean().item(), rel=1e-5)


def test_bad_shapes_raise_value_error_naming_shapes():
    logps, old, ref, mask, rewards = _batch(dtype=torch.float32)
    adv = group_advantages(rewards, G)
    with pytest.raises(ValueError, match=r"group_size=5 does not divide N=12"):
        reg_grpo_loss(logps, old, adv, mask, 5)
    with pytest.raises(ValueError, match=r"group_size=5 does not divide N=12"):
        group_advantages(rewards, 5)
    with pytest.raises(ValueError, match=r"old_logps.*\(12, 5\).*\(12, 4\)"):
        reg_grpo_loss(logps, old[:, :4], adv, mask, G)
    with pytest.raises(ValueError, match=r"advantages must be \(N,\) = \(12,\), got \(11,\)"):
        grpo_loss(logps, old, adv[:11], mask)
    with pytest.raises(ValueError, match=r"mask.*got \(12, 6\)"):
        grpo_loss(logps, old, adv, torch.ones(12, 6))
    with pytest.raises(ValueError, match=r"ref_logps"):
        reg_grpo_loss(logps, old, adv, mask, G, ref_logps=ref[:6])
    with pytest.raises(ValueError, match=r"logps must be \(N, T\), got shape \(12,\)"):
        reg_grpo_loss(logps[:, 0], old[:, 0], adv, mask[:, 0], G)
    with pytest.raises(ValueError, match=r"rewards must be \(N,\)"):
        group_advantages(rewards.view(3, 4), G)
    with pytest.raises(ValueError, match=r"positive int"):
        reg_grpo_loss(logps, old, adv, mask, 0)
