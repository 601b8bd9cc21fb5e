"""The chunked, head-fused distillation loss equals the naive one on full logits, value and gradients,
for every divergence, with ignored positions, padded logit rows, a bias, and the CE-only baseline."""
import pytest
import torch
import torch.nn.functional as F

from workbench.config.schema import DIVERGENCES, LossSpec
from workbench.losses.distill import distill_loss
from workbench.losses.fused import fused_distill_loss
from workbench.losses.signal import CachedTopK, LiveHead, LiveLogits

N, H_S, H_T, V = 37, 16, 24, 50


def case(seed=0, teacher_vocab=V, bias=False):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(N, H_S, generator=g, dtype=torch.float64).float().requires_grad_(True)
    ws = (torch.randn(V, H_S, generator=g) * 0.5).requires_grad_(True)
    bs = (torch.randn(V, generator=g) * 0.1).requires_grad_(True) if bias else None
    ht = torch.randn(N, H_T, generator=g)
    wt = torch.randn(teacher_vocab, H_T, generator=g) * 0.5
    labels = torch.randint(0, V, (N,), generator=g)
    labels[::4] = -100  # prompt / padding positions
    return hs, ws, bs, ht, wt, labels


def grads(result, *leaves):
    return torch.autograd.grad(result["loss"], [x for x in leaves if x is not None])


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_chunked_equals_naive_for_every_divergence(divergence):
    spec = LossSpec(divergence=divergence, alpha=0.3, temperature=2.0, beta=0.3, skew_lambda=0.2)
    hs, ws, bs, ht, wt, labels = case(bias=True)
    naive = distill_loss(F.linear(hs, ws, bs), LiveLogits(ht @ wt.T), labels, spec)
    fused = fused_distill_loss(hs, ws, labels, spec, LiveHead(ht, wt), student_bias=bs, chunk=5)
    for key in ("loss", "ce", "kd"):
        assert fused[key].item() == pytest.approx(naive[key].item(), abs=1e-5, rel=1e-5), key
    for a, b in zip(grads(naive, hs, ws, bs), grads(fused, hs, ws, bs)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()


def test_padded_teacher_rows_and_accumulation_counts():
    """A teacher with extra (padding) logit rows is compared on the shared ones, and num_items_in_batch
    (the whole accumulated batch's target count) divides the sums, as in distill_loss."""
    spec = LossSpec(alpha=0.5, temperature=1.0)
    hs, ws, _, ht, wt, labels = case(seed=1, teacher_vocab=V + 6)
    naive = distill_loss(hs @ ws.T, LiveLogits(ht @ wt.T, kd_vocab=V), labels, spec, num_items_in_batch=100)
    fused = fused_distill_loss(hs, ws, labels, spec, LiveHead(ht, wt, kd_vocab=V), num_items_in_batch=100, chunk=8)
    assert fused["loss"].item() == pytest.approx(naive["loss"].item(), abs=1e-6)
    for a, b in zip(grads(naive, hs, ws), grads(fused, hs, ws)):
        assert torch.allclose(a, b, atol=1e-6)


def test_ce_only_baseline_and_chunk_sizes():
    spec = LossSpec(alpha=1.0)
    hs, ws, _, _, _, labels = case(seed=2)
    naive = distill_loss(hs @ ws.T, None, labels, spec)
    expected = grads(naive, hs, ws)
    for chunk in (1, 7, N, 10 * N):
        fused = fused_distill_loss(hs, ws, labels, spec, chunk=chunk)
        assert set(fused) == {"loss", "ce"} and fused["loss"].item() == pytest.approx(naive["loss"].item(), abs=1e-6)
        for a, b in zip(expected, grads(fused, hs, ws)):
            assert torch.allclose(a, b, atol=1e-6)
    with torch.no_grad():  # evaluation: the same values, no gradient work
        quiet = fused_distill_loss(hs, ws, labels, spec, chunk=7)
    assert quiet["loss"].item() == pytest.approx(naive["loss"].item(), abs=1e-6) and not quiet["loss"].requires_grad
    with pytest.raises(ValueError, match="chunk must be"):
        fused_distill_loss(hs, ws, labels, spec, chunk=0)


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_the_soft_label_strategy_gives_the_same_gradients_fused_or_plain(teacher_dir, student_dir, alpha):
    """Through real models: last hidden states + heads, chunked, against full logits, every student weight."""
    from transformers import AutoModelForCausalLM

    from workbench.config.schema import DistillConfig
    from workbench.engine.strategies.soft import SoftLabelStrategy
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    student = AutoModelForCausalLM.from_pretrained(student_dir)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 300, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    results = {}
    for chunk in (0, 7):
        config = DistillConfig.from_dict({"teacher": {"name_or_path": "t"}, "student": {"name_or_path": "s"},
                                          "data": {"source": "d"}, "loss": {"alpha": alpha, "temperature": 2.0,
                                                                            "chunk_size": chunk}})
        student.zero_grad()
        terms = SoftLabelStrategy(config, teacher, None).compute_loss(student, inputs, None)
        terms["loss"].backward()
        results[chunk] = (terms, {n: p.grad.clone() for n, p in student.named_parameters()})
    (plain, plain_grads), (fused, fused_grads) = results[0], results[7]
    assert plain.keys() == fused.keys()
    for key in plain:
        assert fused[key].item() == pytest.approx(plain[key].item(), abs=1e-5)
    for name, grad in plain_grads.items():
        assert torch.allclose(fused_grads[name], grad, atol=1e-5), name


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd", "tvd"])
def test_chunked_with_cached_teacher_rows_equals_the_plain_sparse_loss(divergence):
    from workbench.engine.teacher_cache import top_k_logprobs
    from workbench.losses.divergences import ce_loss, sparse_kd_loss
    spec = LossSpec(divergence=divergence, alpha=0.4, temperature=1.5, beta=0.3)
    hs, ws, _, ht, wt, labels = case(seed=3)
    rows = top_k_logprobs(ht @ wt.T, 6)
    logits = hs @ ws.T
    ce, kd = ce_loss(logits, labels), sparse_kd_loss(logits, *rows, labels, divergence, 1.5, 0.3)
    plain = {"loss": 0.4 * ce + 0.6 * kd, "ce": ce, "kd": kd}
    fused = fused_distill_loss(hs, ws, labels, spec, CachedTopK(*rows), chunk=5)
    unfused = distill_loss(logits, CachedTopK(*rows), labels, spec)
    for key in ("loss", "ce", "kd"):
        assert fused[key].item() == pytest.approx(plain[key].item(), abs=1e-5), key
        assert unfused[key].item() == pytest.approx(plain[key].item(), abs=1e-6), key
    for a, b in zip(grads(plain, hs, ws), grads(fused, hs, ws)):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("teacher", ["live", "cached"])
def test_alpha_edges_train_through_the_fused_loss(alpha, teacher):
    """Pure KD (alpha 0) and pure CE (alpha 1) with a teacher present: the loss carries gradients, equal
    to the plain loss's, and is exactly the one term."""
    from workbench.engine.teacher_cache import top_k_logprobs
    from workbench.losses.divergences import ce_loss, sparse_kd_loss
    spec = LossSpec(alpha=alpha, temperature=2.0)
    hs, ws, _, ht, wt, labels = case(seed=5)
    if teacher == "live":
        plain = distill_loss(hs @ ws.T, LiveLogits(ht @ wt.T), labels, spec)
        fused = fused_distill_loss(hs, ws, labels, spec, LiveHead(ht, wt), chunk=8)
    else:
        rows = top_k_logprobs(ht @ wt.T, 6)
        logits = hs @ ws.T
        term = ce_loss(logits, labels) if alpha == 1 else sparse_kd_loss(logits, *rows, labels, "forward_kl", 2.0)
        plain = {"loss": term}
        fused = fused_distill_loss(hs, ws, labels, spec, CachedTopK(*rows), chunk=8)
    assert fused["loss"].requires_grad
    assert fused["loss"].item() == pytest.approx(fused["ce" if alpha == 1 else "kd"].item())
    assert fused["loss"].item() == pytest.approx(plain["loss"].item(), abs=1e-5)
    for a, b in zip(grads(plain, hs, ws), grads(fused, hs, ws)):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_non_finite_teacher_at_ignored_positions_leaves_gradients_finite(divergence):
    spec = LossSpec(divergence=divergence, alpha=0.3, temperature=2.0)
    hs, ws, _, ht, wt, labels = case(seed=6)
    masked = labels == -100
    bad = ht.clone()
    bad[masked.nonzero()[0, 0]] = float("nan")  # NaN teacher hidden state: a whole NaN logit row
    clean = fused_distill_loss(hs, ws, labels, spec, LiveHead(ht, wt), chunk=5)
    poisoned = fused_distill_loss(hs, ws, labels, spec, LiveHead(bad, wt), chunk=5)
    assert poisoned["loss"].item() == clean["loss"].item()
    (g_clean,), (g_bad,) = torch.autograd.grad(clean["loss"], [hs]), torch.autograd.grad(poisoned["loss"], [hs])
    assert torch.isfinite(g_bad).all() and (g_bad[masked] == 0).all()
    assert torch.equal(g_bad, g_clean)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_a_cache_teacher_with_fewer_logits_than_the_student_is_compared_on_the_shared_ones(divergence):
    """A student with padding logit rows (V + 6) and a cache of the teacher's whole vocabulary (k = V): KD
    equals the dense loss on the shared V logits, finite for reverse KL too (the padded rows' mass must
    not land in a bucket the teacher has none in), plain and fused alike."""
    from workbench.engine.teacher_cache import top_k_logprobs
    from workbench.losses.divergences import kd_loss, sparse_kd_loss
    spec = LossSpec(divergence=divergence, alpha=0.0, temperature=2.0)
    g = torch.Generator().manual_seed(7)
    hs = torch.randn(N, H_S, generator=g).requires_grad_(True)
    ws = (torch.randn(V + 6, H_S, generator=g) * 0.5).requires_grad_(True)
    ht, wt = torch.randn(N, H_T, generator=g), torch.randn(V, H_T, generator=g) * 0.5
    labels = torch.randint(0, V, (N,), generator=g)
    rows = top_k_logprobs(ht @ wt.T, V)
    dense = kd_loss((hs @ ws.T)[:, :V], ht @ wt.T, labels, divergence, 2.0)
    plain = sparse_kd_loss((hs @ ws.T)[:, :V], *rows, labels, divergence, 2.0)
    fused = fused_distill_loss(hs, ws, labels, spec, CachedTopK(*rows, kd_vocab=V), chunk=8)
    assert torch.isfinite(fused["kd"]) and fused["kd"].item() == pytest.approx(dense.item(), rel=1e-4)
    assert plain.item() == pytest.approx(dense.item(), rel=1e-4)
    for a, b in zip(grads({"loss": dense}, hs, ws), grads(fused, hs, ws)):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_every_signal_gives_both_losses_the_same_kd(divergence):
    """The teacher as logits, as hidden states and head, or as a cache row with k = V: one KD term, plain
    or fused, whatever the signal's kind (the losses never branch on where the teacher came from)."""
    from workbench.engine.teacher_cache import top_k_logprobs
    spec = LossSpec(divergence=divergence, alpha=0.3, temperature=1.0)
    hs, ws, _, ht, wt, labels = case(seed=7)
    signals = {"logits": LiveLogits(ht @ wt.T), "head": LiveHead(ht, wt),
               "cache": CachedTopK(*top_k_logprobs(ht @ wt.T, wt.shape[0]))}
    reference = distill_loss(hs @ ws.T, signals["logits"], labels, spec)["kd"].item()
    for name, signal in signals.items():
        assert distill_loss(hs @ ws.T, signal, labels, spec)["kd"].item() == pytest.approx(reference, rel=1e-4), name
        fused = fused_distill_loss(hs, ws, labels, spec, signal, chunk=4)["kd"].item()
        assert fused == pytest.approx(reference, rel=1e-4), name


@pytest.mark.parametrize("chunk", [0, 7])
def test_the_teacher_runs_once_per_held_out_batch(teacher_dir, student_dir, chunk):
    """Held-out batches meet a frozen teacher at every evaluation: its answer is kept, so later evaluations
    run only the student, with the same numbers. Training batches always run the teacher."""
    from transformers import AutoModelForCausalLM

    from workbench.config.schema import DistillConfig
    from workbench.engine.strategies.soft import SoftLabelStrategy
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    student = AutoModelForCausalLM.from_pretrained(student_dir)
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(5, 300, (2, 12), generator=g) for _ in range(2)]
    config = DistillConfig.from_dict({"teacher": {"name_or_path": "t"}, "student": {"name_or_path": "s"},
                                      "data": {"source": "d"}, "loss": {"alpha": 0.5, "chunk_size": chunk}})
    strategy = SoftLabelStrategy(config, teacher, None)

    def terms(ids):
        with torch.no_grad():
            return strategy.compute_loss(student, {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                                   "labels": ids}, None)

    strategy.evaluating = True  # as DistillTrainer.evaluate sets it
    first = [terms(ids) for ids in batches]
    again = [terms(ids) for ids in batches]
    assert len(calls) == 2 and all(a[k].item() == b[k].item() for a, b in zip(first, again) for k in a)
    other = batches[0].clone()
    other[0, 3] += 1  # one token differs: another batch
    terms(other)
    assert len(calls) == 3
    strategy.evaluating = False  # training batches, even with the student in eval mode (a benchmark's)
    student.eval()
    terms(batches[0])
    terms(batches[0])
    assert len(calls) == 5
