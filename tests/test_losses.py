"""Tests for workbench.losses.divergences: each divergence against a reference or an identity, -100 masking,
T^2 scaling, exact gradient accumulation through num_items_in_batch, and distill_loss's mixing."""
import math

import pytest
import torch
import torch.nn.functional as F

from workbench.config import schema as config
from workbench.config.schema import LossSpec
from workbench.losses import divergences as losses
from workbench.losses.distill import distill_loss
from workbench.losses.divergences import (
    ce_loss,
    forward_kl,
    generalized_jsd,
    kd_loss,
    masked_reduce,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    total_variation,
)
from workbench.losses.signal import LiveLogits

B, L, V = 2, 3, 5
ATOL = 1e-6


def rand_logits(*shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


@pytest.fixture
def st():
    return rand_logits(B, L, V, seed=0), rand_logits(B, L, V, seed=1, scale=3.0)


def ref_kl(s, t, temperature):
    """KL(softmax(t/T) || softmax(s/T)) per position, by torch's own kl_div."""
    return F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                    reduction="none", log_target=True).sum(-1)


def close(a, b, atol=ATOL):
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


# ---------------------------------------------------------------- per-position divergences

def test_names_match_config():
    assert set(losses.DIVERGENCES) == set(config.DIVERGENCES)
    assert losses.KL_TYPE == set(config.DIVERGENCES) - {"tvd"}


@pytest.mark.parametrize("name", list(losses.DIVERGENCES))
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_identical_logits_give_zero(st, name, temperature):
    s, _ = st
    value = losses.DIVERGENCES[name](s, s.clone(), temperature)
    assert value.shape == (B, L)
    close(value, torch.zeros(B, L))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_forward_and_reverse_kl_match_torch(st, temperature):
    s, t = st
    close(forward_kl(s, t, temperature), ref_kl(s, t, temperature))
    close(reverse_kl(s, t, temperature), ref_kl(t, s, temperature))
    assert not torch.allclose(forward_kl(s, t, temperature), reverse_kl(s, t, temperature))


def test_jsd_edges_symmetry_and_bound(st):
    s, t = st
    close(generalized_jsd(s, t, beta=0.0), forward_kl(s, t))
    close(generalized_jsd(s, t, beta=1.0), reverse_kl(s, t))
    half = generalized_jsd(s, t, beta=0.5)
    close(half, generalized_jsd(t, s, beta=0.5))
    assert (half <= math.log(2) + ATOL).all() and (half > 0).all()
    for beta in (0.1, 0.3, 0.9):
        assert (generalized_jsd(s, t, beta=beta) >= -ATOL).all()
    # Disjoint supports reach the bound: the mixture holds each half of the mass at weight 1/2.
    a, b = torch.full((1, V), -1e4), torch.full((1, V), -1e4)
    a[0, 0], b[0, 1] = 1e4, 1e4
    close(generalized_jsd(a, b, beta=0.5), torch.tensor([math.log(2)]))


def test_jsd_matches_mixture_definition(st):
    s, t = st
    p, q = F.softmax(t, -1), F.softmax(s, -1)
    beta = 0.3
    m = beta * p + (1 - beta) * q
    ref = beta * (p * (p / m).log()).sum(-1) + (1 - beta) * (q * (q / m).log()).sum(-1)
    close(generalized_jsd(s, t, beta=beta), ref)


def test_skew_kl_edges_and_definition(st):
    s, t = st
    close(skew_kl(s, t, skew_lambda=0.0), forward_kl(s, t))
    close(skew_kl(s, t, skew_lambda=1.0), torch.zeros(B, L))
    close(skew_reverse_kl(s, t, skew_lambda=0.0), reverse_kl(s, t))
    close(skew_reverse_kl(s, t, skew_lambda=1.0), torch.zeros(B, L))
    p, q, lam = F.softmax(t, -1), F.softmax(s, -1), 0.1
    close(skew_kl(s, t, skew_lambda=lam), (p * (p / (lam * p + (1 - lam) * q)).log()).sum(-1))
    close(skew_reverse_kl(s, t, skew_lambda=lam), (q * (q / (lam * q + (1 - lam) * p)).log()).sum(-1))


def test_tvd_range_disjoint_and_symmetric(st):
    s, t = st
    tvd = total_variation(s, t)
    assert ((tvd >= 0) & (tvd <= 1)).all() and (tvd > 0).all()
    close(tvd, total_variation(t, s))
    close(tvd, 0.5 * (F.softmax(s, -1) - F.softmax(t, -1)).abs().sum(-1))
    a, b = torch.full((2, V), -1e4), torch.full((2, V), -1e4)
    a[:, 0], b[:, 3] = 1e4, 1e4
    close(total_variation(a, b), torch.ones(2))


# ---------------------------------------------------------------- reduction, masking, scaling

@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("name", list(losses.DIVERGENCES))
def test_kd_loss_scales_kl_types_by_t_squared(st, name, temperature):
    s, t = st
    labels = torch.tensor([[1, 2, -100], [0, -100, 4]])
    per_position = losses.DIVERGENCES[name](s, t, temperature)
    scale = temperature ** 2 if name != "tvd" else 1.0
    close(kd_loss(s, t, labels, name, temperature), scale * per_position[labels != -100].mean())


@pytest.mark.parametrize("name", ["forward_kl", "jsd", "tvd"])
def test_masked_positions_change_nothing(st, name):
    s, t = st
    labels = torch.tensor([[1, 2, -100], [-100, 3, 4]])
    masked = labels == -100

    def loss_and_grad(s_in, t_in):
        leaf = s_in.clone().requires_grad_(True)
        spec = LossSpec(divergence=name, alpha=0.5, temperature=2.0)
        loss = distill_loss(leaf, LiveLogits(t_in), labels, spec)["loss"]
        loss.backward()
        return loss.detach(), leaf.grad

    loss_a, grad_a = loss_and_grad(s, t)
    s2, t2 = s.clone(), t.clone()
    s2[masked] = rand_logits(int(masked.sum()), V, seed=5, scale=10.0)
    t2[masked] = rand_logits(int(masked.sum()), V, seed=6, scale=10.0)
    loss_b, grad_b = loss_and_grad(s2, t2)
    close(loss_a, loss_b)
    close(grad_a[~masked], grad_b[~masked])
    assert (grad_a[masked] == 0).all()


def test_all_masked_batch_gives_zero_not_nan(st):
    s, t = st
    labels = torch.full((B, L), -100)
    leaf = s.clone().requires_grad_(True)
    out = distill_loss(leaf, LiveLogits(t), labels, LossSpec(divergence="jsd", temperature=2.0))
    out["loss"].backward()
    for value in out.values():
        assert value.item() == 0.0
    assert torch.isfinite(leaf.grad).all() and (leaf.grad == 0).all()
    assert masked_reduce(torch.ones(B, L), labels, num_items_in_batch=0).item() == 0.0


def test_ce_matches_torch_mean(st):
    s, _ = st
    labels = torch.tensor([[1, 2, -100], [0, -100, 4]])
    ref = F.cross_entropy(s.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    close(ce_loss(s, labels), ref)


def test_masked_reduce_uses_given_count():
    values = torch.arange(6.0).view(2, 3)
    labels = torch.tensor([[0, 0, -100], [0, -100, 0]])
    assert masked_reduce(values, labels).item() == pytest.approx((0 + 1 + 3 + 5) / 4)
    assert masked_reduce(values, labels, num_items_in_batch=10).item() == pytest.approx(0.9)
    assert masked_reduce(values, labels, num_items_in_batch=torch.tensor(10)).item() == pytest.approx(0.9)
    with pytest.raises(ValueError, match="shape"):
        masked_reduce(values, labels[:, :2])


# ---------------------------------------------------------------- gradient accumulation

def _accum_case():
    """4 sequences of length 6 with 6, 5, 2 and 1 valid tokens: halves of 11 and 3 tokens."""
    s, t = rand_logits(4, 6, V, seed=10), rand_logits(4, 6, V, seed=11, scale=3.0)
    labels = torch.randint(0, V, (4, 6), generator=torch.Generator().manual_seed(12))
    for row, valid in enumerate([6, 5, 2, 1]):
        labels[row, valid:] = -100
    return s, t, labels


def _loss_fns():
    spec = LossSpec(divergence="jsd", alpha=0.3, temperature=2.0, beta=0.4)
    return {
        "ce": lambda s, t, y, n: ce_loss(s, y, num_items_in_batch=n),
        "kd_forward_kl": lambda s, t, y, n: kd_loss(s, t, y, "forward_kl", 2.0, num_items_in_batch=n),
        "kd_jsd": lambda s, t, y, n: kd_loss(s, t, y, "jsd", 2.0, beta=0.4, num_items_in_batch=n),
        "distill_total": lambda s, t, y, n: distill_loss(s, LiveLogits(t), y, spec, num_items_in_batch=n)["loss"],
    }


@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("which", list(_loss_fns()))
def test_gradient_accumulation_is_exact(which, as_tensor):
    fn = _loss_fns()[which]
    s, t, labels = _accum_case()
    n_total = int((labels != -100).sum())
    n = torch.tensor(n_total) if as_tensor else n_total

    full = s.clone().requires_grad_(True)
    full_loss = fn(full, t, labels, None)
    full_loss.backward()

    accum = s.clone().requires_grad_(True)
    accum_loss = sum(fn(accum[i:i + 2], t[i:i + 2], labels[i:i + 2], n) for i in (0, 2))
    accum_loss.backward()

    close(accum_loss.detach(), full_loss.detach())
    close(accum.grad, full.grad)

    # Sensitivity: averaging the per-half means weighs 3 tokens like 11 and does not match.
    naive = sum(fn(s[i:i + 2], t[i:i + 2], labels[i:i + 2], None) for i in (0, 2)) / 2
    assert abs(naive.item() - full_loss.item()) > 1e-3


# ---------------------------------------------------------------- distill_loss

def test_distill_loss_mixing(st):
    s, t = st
    labels = torch.tensor([[1, 2, -100], [0, 3, 4]])
    leaf = s.clone().requires_grad_(True)
    spec = LossSpec(divergence="skew_kl", alpha=0.3, temperature=2.0, skew_lambda=0.2)
    out = distill_loss(leaf, LiveLogits(t), labels, spec)
    assert set(out) == {"loss", "ce", "kd"}
    assert all(v.dim() == 0 and v.dtype == torch.float32 for v in out.values())
    close(out["ce"], ce_loss(s, labels))
    close(out["kd"], kd_loss(s, t, labels, "skew_kl", 2.0, skew_lambda=0.2))
    close(out["loss"], 0.3 * out["ce"] + 0.7 * out["kd"])
    assert out["ce"].grad_fn is not None and out["kd"].grad_fn is not None


def test_distill_loss_alpha_edges(st):
    s, t = st
    labels = torch.tensor([[1, 2, -100], [0, 3, 4]])
    leaf = s.clone().requires_grad_(True)

    only_ce = distill_loss(leaf, LiveLogits(t), labels, LossSpec(divergence="reverse_kl", alpha=1.0, temperature=2.0))
    assert torch.equal(only_ce["loss"], ce_loss(leaf, labels))
    assert only_ce["kd"].grad_fn is None and only_ce["kd"].item() > 0
    assert only_ce["loss"].grad_fn is not None

    only_kd = distill_loss(leaf, LiveLogits(t), labels, LossSpec(divergence="reverse_kl", alpha=0.0, temperature=2.0))
    assert torch.equal(only_kd["loss"], kd_loss(leaf, t, labels, "reverse_kl", 2.0))
    assert only_kd["ce"].grad_fn is None and only_kd["ce"].item() > 0
    assert only_kd["loss"].grad_fn is not None


def test_distill_loss_without_teacher(st):
    s, _ = st
    labels = torch.tensor([[1, 2, -100], [0, 3, 4]])
    leaf = s.clone().requires_grad_(True)
    out = distill_loss(leaf, None, labels, LossSpec(alpha=0.0))
    assert set(out) == {"loss", "ce"}
    assert torch.equal(out["loss"], ce_loss(leaf, labels))
    assert out["loss"].grad_fn is not None


# ---------------------------------------------------------------- errors and dtypes

def test_mismatched_vocab_raises(st):
    s, t = st
    with pytest.raises(ValueError, match=r"5.*7"):
        kd_loss(s, torch.cat([t, t[..., :2]], -1), torch.zeros(B, L, dtype=torch.long))


def test_unknown_divergence_raises(st):
    s, t = st
    with pytest.raises(ValueError, match="forward_kl.*tvd"):
        kd_loss(s, t, torch.zeros(B, L, dtype=torch.long), divergence="hellinger")


@pytest.mark.parametrize("name", list(losses.DIVERGENCES))
def test_bf16_inputs_give_float32_close_to_float32(st, name):
    s, t = st
    labels = torch.tensor([[1, 2, -100], [0, 3, 4]])
    spec = LossSpec(divergence=name, alpha=0.5, temperature=2.0)
    low = distill_loss(s.bfloat16(), LiveLogits(t.bfloat16()), labels, spec)
    high = distill_loss(s, LiveLogits(t), labels, spec)
    for key in high:
        assert low[key].dtype == torch.float32
        # The only loss is rounding the logits to bf16 (8 bits of mantissa); the math runs in float32.
        torch.testing.assert_close(low[key], high[key], atol=2e-2, rtol=2e-2)
    upcast = distill_loss(s.bfloat16().float(), LiveLogits(t.bfloat16().float()), labels, spec)
    close(low["loss"], upcast["loss"])


def test_kd_vocab_slices_padding_rows_for_kd_but_not_ce():
    """Teacher with 3 extra padding logits: KD compares the shared 5, CE keeps the student's full softmax."""
    from workbench.config.schema import LossSpec
    torch.manual_seed(0)
    student = torch.randn(2, 3, 5)
    teacher_padded = torch.cat([torch.randn(2, 3, 5), torch.full((2, 3, 3), 7.0)], dim=-1)
    labels = torch.tensor([[1, 2, -100], [0, 4, 3]])
    spec = LossSpec(alpha=0.5)
    out = distill_loss(student, LiveLogits(teacher_padded, kd_vocab=5), labels, spec)
    assert torch.allclose(out["kd"], kd_loss(student, teacher_padded[..., :5], labels))
    assert torch.allclose(out["ce"], ce_loss(student, labels))
    with pytest.raises(ValueError):
        distill_loss(student, LiveLogits(teacher_padded), labels, spec)


# ---------------------------------------------------------------- non-finite inputs

@pytest.mark.parametrize("name", list(losses.DIVERGENCES))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_teacher_logits_at_ignored_positions_add_exactly_zero(st, name, bad):
    """A teacher logit that is NaN or inf where labels are -100 (a padded row, a prompt token) changes
    neither the loss nor any gradient, and the ignored positions' gradient is exactly 0."""
    s, t = st
    labels = torch.tensor([[1, 2, -100], [0, -100, 4]])
    masked = labels == -100
    poisoned = t.clone()
    poisoned[0, 2, 1] = bad
    poisoned[1, 1] = bad
    spec = LossSpec(divergence=name, alpha=0.3, temperature=2.0)
    clean_leaf, leaf = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    clean, out = distill_loss(clean_leaf, LiveLogits(t), labels, spec), distill_loss(leaf, LiveLogits(poisoned), labels, spec)
    out["loss"].backward()
    clean["loss"].backward()
    for key in out:
        assert out[key].item() == clean[key].item(), key
    assert torch.isfinite(leaf.grad).all()
    assert (leaf.grad[masked] == 0).all()
    assert torch.equal(leaf.grad, clean_leaf.grad)


@pytest.mark.parametrize("name", list(losses.DIVERGENCES))
def test_tokens_without_mass_add_zero_and_no_nan(name):
    """A logit of -inf is a token with no mass (an empty bucket): where both models give it none the
    divergence is that of the other tokens, with finite gradients; identical inputs still give 0."""
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    s_empty, t_empty = torch.cat([s, torch.full((4, 1), float("-inf"))], -1), torch.cat(
        [t, torch.full((4, 1), float("-inf"))], -1)
    leaf = s_empty.clone().requires_grad_(True)
    value = losses.DIVERGENCES[name](leaf, t_empty, 2.0)
    close(value, losses.DIVERGENCES[name](s, t, 2.0))
    value.sum().backward()
    assert torch.isfinite(leaf.grad).all()
    same = losses.DIVERGENCES[name](s_empty, t_empty.clone().copy_(s_empty), 2.0)
    close(same, torch.zeros(4))


@pytest.mark.parametrize("name", list(losses.DIVERGENCES))
def test_a_nan_teacher_at_a_target_position_gives_nan_not_zero(st, name):
    """Zero mass (-inf) adds nothing, but NaN is not zero mass: it must reach the loss, where the trainer
    stops the run (or skips the step) instead of training on a silently zero KD term."""
    s, t = st
    labels = torch.tensor([[1, 2, 3], [0, 3, 4]])
    bad = t.clone()
    bad[0, 1] = float("nan")
    assert torch.isnan(kd_loss(s, bad, labels, name, 2.0))
