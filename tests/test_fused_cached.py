"""The fused loss's closed form against stored teacher rows (workbench/losses/fused_cached.py) gives the
values and gradients of the plain loss on full logits (sparse_kd_loss and sampled_kd_loss under autograd):
plain top-k and sampled-tail rows, alpha at 0 and 1, T 1 and 2, ignored positions, rows with no tail, a
head that is the whole vocabulary, float16 rows as the cache stores them."""
import pytest
import torch
import torch.nn.functional as F

from workbench.config.schema import LossSpec
from workbench.engine.teacher_cache import top_k_logprobs
from workbench.losses import fused_cached
from workbench.losses.distill import distill_loss
from workbench.losses.fused import fused_distill_loss
from workbench.losses.signal import CachedTopK

N, H, V = 31, 12, 40


def case(seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(N, H, generator=g).requires_grad_(True)
    ws = (torch.randn(V, H, generator=g) * 0.5).requires_grad_(True)
    bs = (torch.randn(V, generator=g) * 0.1).requires_grad_(True)
    teacher = torch.randn(N, V, generator=g) * 2
    labels = torch.randint(0, V, (N,), generator=g)
    labels[::4] = -100
    return hs, ws, bs, teacher, labels


def signal(teacher, k, sampled=0, dtype=torch.float32):
    logp, ids, tail = top_k_logprobs(teacher, k, sampled, torch.Generator().manual_seed(5))
    return CachedTopK(logp.to(dtype), ids, tail.to(dtype), sampled=sampled)


def assert_same(spec, hs, ws, bs, labels, cached, tol=1e-5):
    plain = distill_loss(F.linear(hs, ws, bs), cached, labels, spec)
    fused = fused_distill_loss(hs, ws, labels, spec, cached, student_bias=bs, chunk=6)
    for key in plain:
        assert fused[key].item() == pytest.approx(plain[key].item(), abs=tol, rel=tol), key
    leaves = (hs, ws, bs)
    for a, b in zip(torch.autograd.grad(plain["loss"], leaves), torch.autograd.grad(fused["loss"], leaves)):
        assert torch.isfinite(b).all() and torch.allclose(a, b, atol=tol, rtol=tol), (a - b).abs().max()


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("sampled", [0, 3])
def test_closed_form_equals_the_plain_loss_on_stored_rows(alpha, temperature, sampled):
    hs, ws, bs, teacher, labels = case()
    assert_same(LossSpec(alpha=alpha, temperature=temperature), hs, ws, bs, labels, signal(teacher, 8, sampled))


@pytest.mark.parametrize("sampled", [0, 3])
def test_rows_with_no_tail_and_float16_rows(sampled):
    """Rows whose teacher puts all its mass on the stored tokens (tail -inf; a sampled row then stores its
    draws with no mass), and the log-probabilities in float16 as a cache keeps them."""
    hs, ws, bs, teacher, labels = case(seed=1)
    teacher[:7, 6:] = float("-inf")  # 6 tokens with mass: the head of k - sampled >= 5 holds almost all
    teacher[:7, :6] = torch.arange(6.0)
    cached = signal(teacher, 9, sampled, torch.float16)
    assert torch.isneginf(cached.tail[:7].float()).all() if sampled == 0 else True
    assert_same(LossSpec(alpha=0.3, temperature=1.0), hs, ws, bs, labels, cached, tol=1e-4)


def test_a_head_of_the_whole_vocabulary_is_the_dense_loss():
    """k = V: nothing outside the stored tokens on either side; the result is kd_loss on full logits."""
    hs, ws, bs, teacher, labels = case(seed=2)
    spec = LossSpec(alpha=0.5, temperature=2.0)
    assert_same(spec, hs, ws, bs, labels, signal(teacher, V))
    from workbench.losses.signal import LiveLogits
    dense = fused_distill_loss(hs, ws, labels, spec, LiveLogits(teacher), student_bias=bs)
    cached = fused_distill_loss(hs, ws, labels, spec, signal(teacher, V), student_bias=bs)
    assert cached["kd"].item() == pytest.approx(dense["kd"].item(), rel=1e-5)


def test_only_forward_kl_over_the_students_vocabulary_takes_the_closed_form():
    _, _, _, teacher, _ = case()
    rows = signal(teacher, 8)
    assert fused_cached.applies(rows, LossSpec(), V)
    assert not fused_cached.applies(rows, LossSpec(divergence="reverse_kl"), V)
    assert not fused_cached.applies(CachedTopK(rows.top_logp, rows.top_ids, rows.tail, kd_vocab=V - 3), LossSpec(), V)


def test_without_gradients_the_values_are_the_same():
    hs, ws, bs, teacher, labels = case(seed=3)
    spec = LossSpec(alpha=0.5)
    with torch.no_grad():
        fused = fused_distill_loss(hs, ws, labels, spec, signal(teacher, 8, 3), student_bias=bs)
        plain = distill_loss(F.linear(hs, ws, bs), signal(teacher, 8, 3), labels, spec)
    assert fused["kd"].item() == pytest.approx(plain["kd"].item(), rel=1e-5)
