"""A teacher cache with sampled tail tokens: at T = 1 the forward-KL and skew-KL terms and their gradients
are unbiased estimates of the full ones (the average over many draws is the dense loss), at T != 1 they
converge as the draws grow, the other divergences get a bound between plain top-k buckets and the full
divergence, and ignored positions stay out of values and gradients."""
import pytest
import torch

from workbench.engine.teacher_cache import top_k_logprobs
from workbench.losses.divergences import kd_loss, sparse_kd_loss
from workbench.losses.sampled_tail import sampled_kd_loss

V = 24


def _pair(seed=0):
    gen = torch.Generator().manual_seed(seed)
    # A teacher with a long, uneven tail: the top few hold most of the mass, the rest is spread.
    teacher = torch.randn(V, generator=gen) * 2.0
    student = torch.randn(V, generator=gen)
    return teacher, student


def _draws(teacher, positions, k, sampled, seed=1):
    rows = teacher.expand(1, positions, V)
    logp, ids, tail = top_k_logprobs(rows, k, sampled, torch.Generator().manual_seed(seed))
    return logp[0], ids[0], tail[0]


@pytest.mark.parametrize("divergence", ["forward_kl", "skew_kl"])
def test_at_t1_the_sampled_loss_and_gradient_average_to_the_dense_ones(divergence):
    teacher, student = _pair()
    positions = 40_000
    logp, ids, tail = _draws(teacher, positions, k=6, sampled=4)
    labels = torch.zeros(positions, dtype=torch.long)
    logits = student.expand(positions, V).clone().requires_grad_(True)
    # The mean over positions is the mean over independent draws of one position's estimate.
    estimate = sampled_kd_loss(logits, logp.half().float(), ids, tail.half().float(), labels, 4, divergence)
    estimate.backward()
    dense_logits = student.clone().requires_grad_(True)
    dense = kd_loss(dense_logits[None], teacher[None], labels[:1], divergence)
    dense.backward()
    assert estimate.item() == pytest.approx(dense.item(), rel=0.02)
    assert torch.allclose(logits.grad.sum(0), dense_logits.grad, atol=3e-3)
    # and the plain top-6 buckets are biased: they miss the tail's shape
    plain = sparse_kd_loss(student[None], *top_k_logprobs(teacher[None], 6), labels[:1], divergence)
    assert abs(plain.item() - dense.item()) > 5 * abs(estimate.item() - dense.item())


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_at_another_temperature_the_estimate_converges_with_more_draws(temperature):
    # Self-normalised importance weights: biased at few draws (most at T > 1, where rare tokens weigh
    # more), consistent as the draws grow.
    teacher, student = _pair(3)
    labels = torch.zeros(100, dtype=torch.long)
    dense = kd_loss(student[None], teacher[None], labels[:1], "forward_kl", temperature=temperature).item()
    errors = []
    for sampled in (4, 4000):
        logp, ids, tail = _draws(teacher, 100, k=2 + sampled, sampled=sampled)
        mean = sampled_kd_loss(student.expand(100, V), logp, ids, tail, labels, sampled, "forward_kl", temperature)
        errors.append(abs(mean.item() - dense))
    assert errors[1] < 0.02 * dense and errors[1] < errors[0]


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd", "tvd", "skew_reverse_kl"])
def test_other_divergences_get_finer_buckets_between_top_k_and_the_full_value(divergence):
    teacher, student = _pair(5)
    labels = torch.zeros(1, dtype=torch.long)
    logp, ids, tail = _draws(teacher, 1, k=8, sampled=5)
    refined = sampled_kd_loss(student[None], logp, ids, tail, labels, 5, divergence).item()
    head = top_k_logprobs(teacher[None], 3)
    coarse = sparse_kd_loss(student[None], *head, labels, divergence).item()
    full = kd_loss(student[None], teacher[None], labels, divergence).item()
    # Merging buckets never increases an f-divergence (data processing); TVD likewise.
    assert coarse - 1e-4 <= refined <= full + 1e-4
    assert refined > coarse + 1e-4  # the distinct draws told the loss something


def test_repeated_draws_count_once_in_the_buckets():
    teacher, student = _pair(7)
    labels = torch.zeros(1, dtype=torch.long)
    logp, ids, tail = _draws(teacher, 1, k=4, sampled=2)
    twice = (torch.cat([logp, logp[:, -1:]], -1), torch.cat([ids, ids[:, -1:]], -1))
    once = sampled_kd_loss(student[None], logp, ids, tail, labels, 2, "reverse_kl")
    repeated = sampled_kd_loss(student[None], *twice, tail, labels, 3, "reverse_kl")
    assert repeated.item() == pytest.approx(once.item(), abs=1e-6)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_ignored_positions_add_nothing_even_when_not_finite(divergence, temperature):
    teacher, student = _pair(9)
    logp, ids, tail = _draws(teacher, 3, k=6, sampled=3)
    labels = torch.tensor([0, -100, 0])
    logits = student.expand(3, V).clone()
    logits[1] = float("nan")
    logp, tail = logp.clone(), tail.clone()
    logp[1], tail[1] = float("nan"), float("-inf")
    logits.requires_grad_(True)
    loss = sampled_kd_loss(logits, logp, ids, tail, labels, 3, divergence, temperature)
    loss.backward()
    kept = sampled_kd_loss(logits.detach()[[0, 2]], logp[[0, 2]], ids[[0, 2]], tail[[0, 2]], labels[[0, 2]], 3,
                           divergence, temperature)
    assert torch.isfinite(logits.grad).all() and logits.grad[1].abs().sum() == 0
    assert loss.item() == pytest.approx(kept.item(), rel=1e-5)


def test_a_row_with_no_tail_draws_nothing_that_counts():
    # Two tokens hold all the mass (the others have none): the tail is empty.
    teacher = torch.full((V,), float("-inf"))
    teacher[:2] = torch.tensor([1.0, 0.0])
    _, student = _pair()
    labels = torch.zeros(1, dtype=torch.long)
    logp, ids, tail = top_k_logprobs(teacher[None, None], 4, 2, torch.Generator().manual_seed(0))
    assert torch.isneginf(tail).all()
    sampled = sampled_kd_loss(student[None], logp[0], ids[0], tail[0], labels, 2)
    assert sampled.item() == pytest.approx(kd_loss(student[None], teacher[None], labels).item(), rel=1e-4)


def test_sampled_must_name_some_of_the_slots():
    teacher, student = _pair()
    logp, ids, tail = _draws(teacher, 1, k=4, sampled=2)
    with pytest.raises(ValueError, match=r"sampled must be in \[1, 4\]"):
        sampled_kd_loss(student[None], logp, ids, tail, torch.zeros(1, dtype=torch.long), 5)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
def test_the_fused_loss_takes_a_sampled_cache_row_as_the_plain_one_does(divergence):
    from test_chunked_loss import case, grads

    from workbench.config.schema import LossSpec
    from workbench.losses.distill import distill_loss
    from workbench.losses.fused import fused_distill_loss
    from workbench.losses.signal import CachedTopK
    spec = LossSpec(divergence=divergence, alpha=0.4, temperature=1.5)
    hs, ws, _, ht, wt, labels = case(seed=3)
    signal = CachedTopK(*top_k_logprobs(ht @ wt.T, 8, 5, torch.Generator().manual_seed(0)), sampled=5)
    plain = distill_loss(hs @ ws.T, signal, labels, spec)
    fused = fused_distill_loss(hs, ws, labels, spec, signal, chunk=5)
    for key in ("loss", "ce", "kd"):
        assert fused[key].item() == pytest.approx(plain[key].item(), abs=1e-5), key
    for a, b in zip(grads(plain, hs, ws), grads(fused, hs, ws)):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_a_sampled_cache_round_trips_resumes_with_the_same_draws_and_is_told_apart(teacher_dir, tokenizer,
                                                                                  corpus_files, tmp_path):
    from transformers import AutoModelForCausalLM

    from workbench.config.schema import DataSpec
    from workbench.data.loading import tokenize_datasets
    from workbench.engine.teacher_cache import CacheError, TeacherCache, build_cache, data_hash, list_caches
    from workbench.models.loading import tokenizer_hash
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    blocks = tokenize_datasets(DataSpec(source=str(corpus_files[0])), tokenizer, 32, 0)[0].select(range(8))
    first = build_cache(teacher, tokenizer, blocks, tmp_path / "a", k=6, shard_blocks=4, tail_samples=4, seed=3)
    build_cache(teacher, tokenizer, blocks, tmp_path / "b", k=6, shard_blocks=4, tail_samples=4, seed=3)
    assert first.tail_samples == 4 and first.bytes_per_token == 6 * 2 + 6 * 2 + 2
    a, b = (TeacherCache.open(tmp_path / name, tokenizer_hash(tokenizer), data_hash(blocks)) for name in "ab")
    rows_a, rows_b = a.rows([5, 1]), b.rows([5, 1])
    assert all(torch.equal(x, y) for x, y in zip(rows_a, rows_b))  # seeded per shard: a rebuild draws the same
    logp, ids, tail = rows_a
    with torch.no_grad():
        full = torch.log_softmax(teacher(input_ids=torch.tensor(blocks[[5, 1]]["input_ids"])).logits[:, :-1], -1)
    # each slot's stored log-probability is its token's; the draws lie outside the two head tokens
    assert torch.allclose(logp, full.gather(-1, ids), atol=2e-2)
    assert not (ids[..., 2:, None] == ids[..., None, :2]).any()
    assert [row["tail samples"] for row in list_caches(tmp_path)] == [4, 4]
    with pytest.raises(CacheError, match="4 tail samples"):
        build_cache(teacher, tokenizer, blocks, tmp_path / "a", k=6, shard_blocks=4, tail_samples=2, seed=3)
    with pytest.raises(CacheError, match=r"tail_samples must be in \[0, 6\]"):
        build_cache(teacher, tokenizer, blocks, tmp_path / "c", k=6, tail_samples=7)


@pytest.mark.parametrize("divergence", ["skew_reverse_kl", "jsd", "tvd"])  # reverse KL is inf here, both ways
def test_a_row_with_no_tail_is_its_head_for_the_bucket_divergences_too(divergence):
    teacher = torch.full((V,), float("-inf"))
    teacher[:3] = torch.tensor([1.0, 0.0, -1.0])
    _, student = _pair()
    labels = torch.zeros(1, dtype=torch.long)
    logp, ids, tail = top_k_logprobs(teacher[None, None], 8, 5, torch.Generator().manual_seed(0))
    assert torch.isneginf(logp[..., 3:]).all()  # the draws of a row with no tail are stored with no mass
    sampled = sampled_kd_loss(student[None], logp[0], ids[0], tail[0], labels, 5, divergence)
    exact = sparse_kd_loss(student[None], *top_k_logprobs(teacher[None], 3), labels, divergence)
    assert sampled.item() == pytest.approx(exact.item(), rel=1e-5)
