"""The fused loss's closed form (CE and forward KL, gradient written down instead of taken by autograd)
gives distill_loss's values and gradients on full logits, and torch.nn.functional's, at the alpha edges,
T 1 and 2, with ignored positions, a bias, a padded teacher, -inf teacher logits and bf16 inputs."""
import pytest
import torch
import torch.nn.functional as F

from workbench.config.schema import LossSpec
from workbench.losses.distill import distill_loss
from workbench.losses.fused import fused_distill_loss
from workbench.losses.signal import LiveHead, LiveLogits

N, H, V = 29, 12, 40


def case(seed=0, dtype=torch.float32, bias=False, teacher_vocab=V):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(N, H, generator=g).to(dtype).requires_grad_(True)
    ws = (torch.randn(V, H, generator=g) * 0.5).to(dtype).requires_grad_(True)
    bs = (torch.randn(V, generator=g) * 0.1).to(dtype).requires_grad_(True) if bias else None
    ht, wt = torch.randn(N, H, generator=g).to(dtype), (torch.randn(teacher_vocab, H, generator=g) * 0.5).to(dtype)
    labels = torch.randint(0, V, (N,), generator=g)
    labels[::3] = -100
    return hs, ws, bs, ht, wt, labels


def grads(result, *leaves):
    return torch.autograd.grad(result["loss"], [x for x in leaves if x is not None])


def assert_same(fused, naive, leaves, tol):
    for key in naive:
        assert fused[key].item() == pytest.approx(naive[key].item(), abs=tol, rel=tol), key
    for a, b in zip(grads(naive, *leaves), grads(fused, *leaves)):
        assert torch.allclose(a.float(), b.float(), atol=tol, rtol=tol), (a - b).abs().max()


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("bias", [False, True])
def test_closed_form_equals_distill_loss(alpha, temperature, bias):
    spec = LossSpec(alpha=alpha, temperature=temperature)
    hs, ws, bs, ht, wt, labels = case(bias=bias)
    for teacher in (LiveHead(ht, wt), LiveLogits(ht @ wt.T)):
        naive = distill_loss(F.linear(hs, ws, bs), LiveLogits(ht @ wt.T), labels, spec)
        assert_same(fused_distill_loss(hs, ws, labels, spec, teacher, student_bias=bs, chunk=4), naive,
                    (hs, ws, bs), 1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_closed_form_equals_torch_references(alpha, temperature):
    """alpha CE + (1 - alpha) T^2 KL(p_T || q_T), per target token, from F.cross_entropy and F.kl_div."""
    spec = LossSpec(alpha=alpha, temperature=temperature)
    hs, ws, _, ht, wt, labels = case(seed=1)
    s, t, keep = hs @ ws.T, ht @ wt.T, labels != -100
    ce = F.cross_entropy(s, labels, ignore_index=-100)
    kd = F.kl_div(F.log_softmax(s[keep] / temperature, -1), F.log_softmax(t[keep] / temperature, -1),
                  log_target=True, reduction="batchmean") * temperature ** 2
    reference = {"loss": alpha * ce + (1 - alpha) * kd, "ce": ce, "kd": kd}
    assert_same(fused_distill_loss(hs, ws, labels, spec, LiveHead(ht, wt), chunk=8), reference, (hs, ws), 1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_padded_teacher_and_teacher_tokens_without_mass(temperature):
    """KD over the first kd_vocab logits only (the student's softmax there is not CE's), and a teacher
    logit of -inf adds 0, as in divergences.py, with finite gradients."""
    spec = LossSpec(alpha=0.5, temperature=temperature)
    hs, ws, _, ht, wt, labels = case(seed=2, teacher_vocab=V + 5)
    t = ht @ wt.T
    t[:, 3] = float("-inf")
    naive = distill_loss(hs @ ws.T, LiveLogits(t, kd_vocab=V - 4), labels, spec, num_items_in_batch=50)
    fused = fused_distill_loss(hs, ws, labels, spec, LiveLogits(t, kd_vocab=V - 4), num_items_in_batch=50,
                               chunk=5)
    assert_same(fused, naive, (hs, ws), 1e-5)


def test_ignored_positions_may_hold_non_finite_hidden_states():
    spec = LossSpec(alpha=0.5)
    hs, ws, _, ht, wt, labels = case(seed=3)
    with torch.no_grad():
        hs[labels == -100] = float("nan")
        ht[labels == -100] = float("inf")
    fused = fused_distill_loss(hs, ws, labels, spec, LiveHead(ht, wt), chunk=4)
    keep = labels != -100
    naive = distill_loss(hs[keep] @ ws.T, LiveLogits(ht[keep] @ wt.T), labels[keep], spec)
    assert_same(fused, naive, (ws,), 1e-5)
    assert torch.isfinite(grads(fused_distill_loss(hs, ws, labels, spec, LiveHead(ht, wt), chunk=4), hs)[0]).all()


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_bf16_inputs_and_autocast(alpha):
    """bf16 heads give the plain loss's values and gradients at bf16's precision, as weights or by autocast."""
    spec = LossSpec(alpha=alpha, temperature=2.0)
    hs, ws, bs, ht, wt, labels = case(seed=4, dtype=torch.bfloat16, bias=True)
    naive = distill_loss(F.linear(hs, ws, bs), LiveLogits(ht @ wt.T), labels, spec)
    fused = fused_distill_loss(hs, ws, labels, spec, LiveHead(ht, wt), student_bias=bs, chunk=4)
    assert fused["loss"].dtype == torch.float32
    assert_same(fused, naive, (hs, ws, bs), 2e-2)
    hs, ws, bs, ht, wt, labels = case(seed=4, bias=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        naive = distill_loss(F.linear(hs, ws, bs), LiveLogits(F.linear(ht, wt)), labels, spec)
        fused = fused_distill_loss(hs, ws, labels, spec, LiveHead(ht, wt), student_bias=bs, chunk=4)
    assert_same(fused, naive, (hs, ws, bs), 2e-2)


def test_a_teacher_of_another_vocabulary_size_is_refused_as_by_the_plain_loss():
    hs, ws, _, ht, wt, labels = case(seed=5, teacher_vocab=V - 3)
    with pytest.raises(ValueError, match="vocabulary sizes differ"):
        fused_distill_loss(hs, ws, labels, LossSpec(alpha=0.5), LiveHead(ht, wt))


@pytest.mark.parametrize("teacher_kind", ["live", "none"])
def test_a_frozen_head_gets_no_gradient_and_costs_no_product(teacher_kind):
    """LoRA and train.freeze_embeddings freeze the head: the hidden states' gradient is still exact, and the
    (V, H) product for the head's gradient is never taken (two matrix products per chunk, not three)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountProducts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls += func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_)
            return func(*args, **(kwargs or {}))

    spec = LossSpec(alpha=0.5)
    hs, ws, _, ht, wt, labels = case(seed=2)
    teacher = LiveLogits(ht @ wt.T) if teacher_kind == "live" else None
    naive = distill_loss(F.linear(hs, ws), teacher, labels, spec)
    expected = torch.autograd.grad(naive["loss"], hs)[0]
    counts = {}
    for frozen in (False, True):
        ws.requires_grad_(not frozen)
        with CountProducts() as products:
            fused = fused_distill_loss(hs, ws, labels, spec, teacher, chunk=4)
            assert torch.allclose(torch.autograd.grad(fused["loss"], hs)[0], expected, atol=1e-5)
        counts[frozen] = products.calls
    chunks = -(-int((labels != -100).sum()) // 4)
    assert counts == {False: 3 * chunks, True: 2 * chunks}
