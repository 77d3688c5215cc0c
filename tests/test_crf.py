import itertools

import pytest
import torch

from pretune.errors import InputError
from pretune.model.crf import CRF, bio_constraints

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _random_crf(k: int, seed: int, **kwargs) -> CRF:
    torch.manual_seed(seed)
    crf = CRF(k, **kwargs)
    with torch.no_grad():  # larger than the init so that paths differ clearly
        crf.start.normal_()
        crf.end.normal_()
        crf.transitions.normal_()
    return crf


def _batch(k: int, lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    emissions = torch.randn(len(lengths), max(lengths), k, generator=g) * 2
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    return emissions, mask


def _path_score(crf: CRF, em: torch.Tensor, path: tuple[int, ...]) -> torch.Tensor:
    """Score of one path over one unpadded sequence, written out directly. em [L, K]."""
    start = crf.start.masked_fill(~crf.allowed_start, -1e4)
    trans = crf.transitions.masked_fill(~crf.allowed_transitions, -1e4)
    s = start[path[0]] + crf.end[path[-1]]
    for t, tag in enumerate(path):
        s = s + em[t, tag]
        if t:
            s = s + trans[path[t - 1], tag]
    return s


def _brute(crf: CRF, em: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    paths = list(itertools.product(range(crf.num_tags), repeat=em.shape[0]))
    scores = torch.stack([_path_score(crf, em, p) for p in paths])
    return torch.logsumexp(scores, 0), paths[int(scores.argmax())]


def _valid_bio(tags: list[str]) -> bool:
    prev = "O"
    for tag in tags:
        if tag.startswith("I-") and prev[2:] != tag[2:]:
            return False
        prev = tag
    return True


@pytest.mark.parametrize("k,seed", [(3, 0), (4, 1), (4, 2)])
def test_log_partition_score_and_decode_match_brute_force(k, seed):
    crf = _random_crf(k, seed)
    lengths = [4, 1, 3]
    emissions, mask = _batch(k, lengths, seed)
    tags = torch.randint(0, k, mask.shape).masked_fill(~mask, -100)  # padding holds -100
    log_z = crf.log_partition(emissions, mask)
    scores = crf.score(emissions, tags, mask)
    decoded = crf.decode(emissions, mask)
    assert log_z.shape == (3,) and scores.shape == (3,)
    for b, length in enumerate(lengths):
        em = emissions[b, :length]
        want_z, want_path = _brute(crf, em)
        torch.testing.assert_close(log_z[b], want_z, rtol=1e-5, atol=1e-5)
        want_score = _path_score(crf, em, tuple(tags[b, :length].tolist()))
        torch.testing.assert_close(scores[b], want_score, rtol=1e-5, atol=1e-5)
        assert decoded[b] == list(want_path)


def test_padding_content_is_ignored():
    crf = _random_crf(3, 5)
    emissions, mask = _batch(3, [4, 2, 3], 5)
    tags = torch.randint(0, 3, mask.shape)
    noisy = emissions.masked_fill(~mask[..., None], 1e3)
    other_tags = tags.masked_fill(~mask, 2)
    torch.testing.assert_close(crf.log_partition(emissions, mask), crf.log_partition(noisy, mask))
    torch.testing.assert_close(crf(emissions, tags, mask), crf(noisy, other_tags, mask))
    assert crf.decode(emissions, mask) == crf.decode(noisy, mask)


def test_nll_is_non_negative_and_gradients_flow():
    crf = _random_crf(4, 3)
    emissions, mask = _batch(4, [4, 2, 3], 3)
    emissions.requires_grad_(True)
    tags = torch.randint(0, 4, mask.shape).masked_fill(~mask, -100)
    nll = crf(emissions, tags, mask)
    assert nll.dim() == 0 and nll.item() >= 0
    nll.backward()
    for grad in (emissions.grad, crf.start.grad, crf.end.grad, crf.transitions.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert emissions.grad[~mask].abs().sum() == 0  # padded positions get no gradient


def test_nll_equals_mean_of_brute_force_negative_log_likelihoods():
    crf = _random_crf(3, 4)
    lengths = [3, 2, 1]
    emissions, mask = _batch(3, lengths, 4)
    tags = torch.randint(0, 3, mask.shape)
    want = torch.stack(
        [
            _brute(crf, emissions[b, :n])[0] - _path_score(crf, emissions[b, :n], tuple(tags[b, :n].tolist()))
            for b, n in enumerate(lengths)
        ]
    ).mean()
    torch.testing.assert_close(crf(emissions, tags, mask), want, rtol=1e-5, atol=1e-5)


def test_bio_constraints_matrix():
    allowed_start, allowed = bio_constraints(LABELS)
    assert allowed_start.tolist() == [True, True, False, True, False]
    ix = {name: i for i, name in enumerate(LABELS)}
    assert allowed[ix["B-PER"], ix["I-PER"]] and allowed[ix["I-PER"], ix["I-PER"]]
    assert not allowed[ix["O"], ix["I-PER"]]
    assert not allowed[ix["B-LOC"], ix["I-PER"]] and not allowed[ix["I-LOC"], ix["I-PER"]]
    assert allowed[ix["I-LOC"], ix["B-PER"]] and allowed[ix["I-PER"], ix["O"]]
    assert int((~allowed).sum()) == 2 * 3  # each I- column forbids O and the 2 tags of the other type
    with pytest.raises(InputError, match="BIO"):
        bio_constraints(["O", "PER"])


def test_viterbi_with_bio_constraints_never_outputs_invalid_sequences():
    allowed_start, allowed = bio_constraints(LABELS)
    crf = _random_crf(5, 7, allowed_transitions=allowed, allowed_start=allowed_start)
    ix = {name: i for i, name in enumerate(LABELS)}
    # emissions strongly favour "O I-PER" and "I-LOC" at the start
    emissions = torch.full((2, 2, 5), -5.0)
    emissions[0, 0, ix["O"]] = emissions[0, 1, ix["I-PER"]] = 50.0
    emissions[1, 0, ix["I-LOC"]] = emissions[1, 1, ix["I-PER"]] = 50.0
    mask = torch.ones(2, 2, dtype=torch.bool)
    for path in crf.decode(emissions, mask):
        assert _valid_bio([LABELS[i] for i in path])
    # random emissions: every decoded path is valid and equals the best allowed path by brute force
    emissions, mask = _batch(5, [4, 3, 4], 11)
    emissions = emissions * 5
    for b, path in enumerate(crf.decode(emissions, mask)):
        assert _valid_bio([LABELS[i] for i in path])
        n = int(mask[b].sum())
        assert path == list(_brute(crf, emissions[b, :n])[1])


def test_disallowed_scores_stay_constant_under_training():
    allowed_start, allowed = bio_constraints(LABELS)
    crf = _random_crf(5, 8, allowed_transitions=allowed, allowed_start=allowed_start)
    emissions, mask = _batch(5, [4, 4, 2], 8)
    crf(emissions, torch.zeros(3, 4, dtype=torch.long), mask).backward()
    assert crf.transitions.grad[~allowed].abs().sum() == 0
    assert crf.start.grad[~allowed_start].abs().sum() == 0
    assert crf.transitions.grad[allowed].abs().sum() > 0


def test_bad_mask_is_rejected():
    crf = CRF(3)
    emissions = torch.randn(2, 3, 3)
    with pytest.raises(ValueError, match="prefix"):
        crf.decode(emissions, torch.tensor([[True, False, True], [True, True, True]]))
    with pytest.raises(ValueError, match="emissions"):
        crf.decode(torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))


def test_tiny_crf_learns_transitions():
    """Token 1 is B-X at the start of a run and I-X inside it; only the transitions can tell them apart."""
    torch.manual_seed(0)
    o, b, i = 0, 1, 2

    def make(n: int, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens = torch.randint(0, 2, (n, steps))
        tags = torch.zeros_like(tokens)
        for row in range(n):
            for t in range(steps):
                if tokens[row, t] == 1:
                    tags[row, t] = i if t > 0 and tokens[row, t - 1] == 1 else b
        lengths = torch.randint(1, steps + 1, (n,))
        mask = torch.arange(steps)[None, :] < lengths[:, None]
        return tokens, tags.masked_fill(~mask, -100), mask

    embed = torch.nn.Embedding(2, 3)  # emissions depend on the token only
    crf = CRF(3)
    optimizer = torch.optim.Adam([*embed.parameters(), *crf.parameters()], lr=0.05)
    tokens, tags, mask = make(64, 8)
    for _ in range(300):
        optimizer.zero_grad()
        loss = crf(embed(tokens), tags, mask)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    test_tokens, test_tags, test_mask = make(32, 10)
    decoded = crf.decode(embed(test_tokens), test_mask)
    for row, path in enumerate(decoded):
        assert path == test_tags[row, : len(path)].tolist()
    assert {tag for path in decoded for tag in path} == {o, b, i}  # the test set exercises every tag
