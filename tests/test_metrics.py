"""Ranking metrics against cases computed by hand, for the rlmrec, cllm4rec and loo protocols.

Most cases use 30 items and a scorer that ranks items by id (score(u, j) = 30 - j), so after
masking, the rank of an unmasked item j is ``j + 1 - #(masked items with id < j)``.
Notation below: I3 = 1 + 1/log2(3) + 1/log2(4) = 2.1309298 (ideal DCG over 3 positions).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recalign.eval.metrics import (PROTOCOLS, Protocol, RankingSums, evaluate, finalize,
                                   get_protocol, ranking_sums)

N_ITEMS = 30
I3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)


def csr(rows: dict[int, list[int]], n_users: int, n_items: int = N_ITEMS) -> sp.csr_matrix:
    r = [u for u, items in rows.items() for _ in items]
    c = [i for items in rows.values() for i in items]
    return sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(n_users, n_items))


def by_id_scorer(n_items: int = N_ITEMS):
    base = torch.arange(n_items, 0, -1, dtype=torch.float32)  # item 0 best

    def score(users: torch.Tensor) -> torch.Tensor:
        return base.repeat(len(users), 1)

    return score


def matrix_scorer(scores: np.ndarray):
    s = torch.from_numpy(np.asarray(scores, dtype=np.float32))

    def score(users: torch.Tensor) -> torch.Tensor:
        return s[users].clone()

    return score


# users: 0 -> train {0, 1}, test {2, 7, 25}; ranks after masking: 2->1, 7->6, 25->24
#        1 -> test {19} (rank 20)
#        2 -> train {3}, no test items: excluded
#        3 -> train {29}, test {0..24} (ranks 1..25)
TRAIN = csr({0: [0, 1], 2: [3], 3: [29]}, 4)
TEST = csr({0: [2, 7, 25], 1: [19], 3: list(range(25))}, 4)


def test_rlmrec_hand_computed():
    # user 0: recall@5 = 1/3, @10 = 2/3, @20 = 2/3 (denominator |T| = 3)
    #         ndcg@5 = 1/I3 = .4692787; ndcg@10 = ndcg@20 = (1 + 1/log2 7)/I3 = .6364392
    # user 1: recall@5 = @10 = 0, @20 = 1; ndcg@20 = 1/log2(21) = .2276702
    # user 3: top 20 all hits; recall@k = k/25: .2, .4, .8 (rlmrec does NOT use min(k,|T|));
    #         ndcg@k = 1 (ideal over min(k, 25) = k positions)
    # means over the 3 users with test items:
    m = evaluate(by_id_scorer(), TEST, TRAIN, protocol="rlmrec")
    assert m["users_evaluated"] == 3 and m["users_excluded"] == 1
    assert m["recall@5"] == pytest.approx((1 / 3 + 0 + 0.2) / 3, abs=1e-7)     # .1777778
    assert m["recall@10"] == pytest.approx((2 / 3 + 0 + 0.4) / 3, abs=1e-7)    # .3555556
    assert m["recall@20"] == pytest.approx((2 / 3 + 1 + 0.8) / 3, abs=1e-7)    # .8222222
    assert m["ndcg@5"] == pytest.approx((0.4692787 + 0 + 1) / 3, abs=1e-6)     # .4897596
    assert m["ndcg@10"] == pytest.approx((0.6364392 + 0 + 1) / 3, abs=1e-6)    # .5454797
    assert m["ndcg@20"] == pytest.approx((0.6364392 + 0.2276702 + 1) / 3, abs=1e-6)  # .6213698
    assert set(m) == {"recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20",
                      "users_evaluated", "users_excluded"}


def test_training_items_are_masked():
    # Without masking user 0's items 0 and 1 keep ranks 1 and 2, so 2 -> rank 3, 7 -> 8:
    # recall@5 = 1/3, recall@10 = 2/3; ndcg@5 = (1/log2 4)/I3 = .2346394,
    # ndcg@10 = (1/log2 4 + 1/log2 9)/I3 = .3826803
    only0 = np.array([0])
    m = evaluate(by_id_scorer(), TEST, None, users=only0)
    assert m["recall@5"] == pytest.approx(1 / 3)
    assert m["ndcg@5"] == pytest.approx(0.2346394, abs=1e-6)
    assert m["ndcg@10"] == pytest.approx(0.3826803, abs=1e-6)
    masked = evaluate(by_id_scorer(), TEST, TRAIN, users=only0)
    assert masked["ndcg@5"] == pytest.approx(0.4692787, abs=1e-6)
    # a masked item is never a hit even when it is also a held-out item
    both = csr({0: [0]}, 1)
    m = evaluate(by_id_scorer(), both, both, protocol="rlmrec")
    assert m["recall@20"] == 0.0 and m["users_evaluated"] == 1


def test_cllm4rec_hand_computed():
    # Same users; metrics recall@20, recall@40, ndcg@100 (k is capped at the 30 items; masked
    # items sit at the end of the list and never count).
    # user 0: ranks 1, 6, 24 -> recall@20 = 2/min(20,3) = 2/3; recall@40 = 3/3 = 1;
    #         ndcg@100 = (1 + 1/log2 7 + 1/log2 25)/I3 = 1.5715656/2.1309298 = .7374929
    # user 1: rank 20 -> recall@20 = 1/min(20,1) = 1; recall@40 = 1; ndcg = 1/log2 21 = .2276702
    # user 3: ranks 1..25 -> recall@20 = 20/min(20,25) = 1 (rlmrec would give .8);
    #         recall@40 = 25/25 = 1; ndcg@100 = 1
    m = evaluate(by_id_scorer(), TEST, TRAIN, protocol="cllm4rec")
    assert m["users_evaluated"] == 3 and m["users_excluded"] == 1
    assert m["recall@20"] == pytest.approx((2 / 3 + 1 + 1) / 3, abs=1e-7)   # .8888889
    assert m["recall@40"] == pytest.approx(1.0, abs=1e-7)
    assert m["ndcg@100"] == pytest.approx((0.7374929 + 0.2276702 + 1) / 3, abs=1e-6)  # .6550544
    assert set(m) == {"recall@20", "recall@40", "ndcg@100", "users_evaluated", "users_excluded"}


def test_loo_hand_computed():
    # user 0: train {0,1,2}, target 4 -> rank 2: hr@5 = hr@10 = 1; ndcg@5 = ndcg@10 = 1/log2 3
    # user 1: target 9 -> rank 10: hr@5 = 0, hr@10 = 1; ndcg@10 = 1/log2 11 = .2890648
    # user 2: train {5}, no target: excluded
    # user 3: target 20 -> rank 21: all 0
    train = csr({0: [0, 1, 2], 2: [5]}, 4)
    test = csr({0: [4], 1: [9], 3: [20]}, 4)
    m = evaluate(by_id_scorer(), test, train, protocol="loo")
    assert m["users_evaluated"] == 3 and m["users_excluded"] == 1
    assert m["hr@5"] == pytest.approx(1 / 3)
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["ndcg@5"] == pytest.approx(0.6309298 / 3, abs=1e-6)               # .2103099
    assert m["ndcg@10"] == pytest.approx((0.6309298 + 0.2890648) / 3, abs=1e-6)  # .3066649
    with pytest.raises(ValueError, match="exactly one"):
        evaluate(by_id_scorer(), csr({0: [4, 5]}, 4), train, protocol="loo")


def test_ties_lower_item_id_first():
    # All items score 0 except item 29 (score 1): order 29, 0, 1, 2, 3, 4, ...
    # target 3 -> rank 5 (hit@5, ndcg@5 = 1/log2 6 = .3868528); target 4 -> rank 6 (miss @5).
    # With user 1's item 0 masked, target 4 moves up to rank 5.
    s = np.zeros((3, N_ITEMS), dtype=np.float32)
    s[:, 29] = 1.0
    test = csr({0: [3], 1: [4], 2: [4]}, 3)
    train = csr({1: [], 2: [0]}, 3)
    for chunk in (1, 2, 10):
        m = ranking_sums(matrix_scorer(s), test, train, protocol="loo", chunk_size=chunk)
        assert m.sums["hr@5"] == 2.0          # users 0 and 2
        assert m.sums["ndcg@5"] == pytest.approx(2 / math.log2(6))
        assert m.sums["hr@10"] == 3.0


def test_all_items_tied_within_top_k_ordered_by_id():
    # every score equal: ranking is by id; targets 0 and 1 take ranks 1, 2 -> ndcg@5 = 1
    s = np.zeros((1, N_ITEMS), dtype=np.float32)
    m = evaluate(matrix_scorer(s), csr({0: [1, 0]}, 1), None)
    assert m["ndcg@5"] == pytest.approx(1.0)
    assert m["recall@5"] == pytest.approx(1.0)


def brute_force(scores, train, test, p: Protocol) -> dict[str, float]:
    """Direct implementation: sort every user's unmasked items by (-score, id)."""
    out = {m: 0.0 for m in p.metric_names}
    n = 0
    for u in range(scores.shape[0]):
        t = set(test[u].indices.tolist())
        if not t:
            continue
        n += 1
        masked = set(train[u].indices.tolist())
        order = sorted((j for j in range(scores.shape[1]) if j not in masked),
                       key=lambda j: (-scores[u, j], j))
        for k in p.recall_ks:
            h = sum(1 for j in order[:k] if j in t)
            out[f"{p.recall_name}@{k}"] += h / (len(t) if p.recall_denominator == "all"
                                                else min(k, len(t)))
        for k in p.ndcg_ks:
            dcg = sum(1 / math.log2(r + 2) for r, j in enumerate(order[:k]) if j in t)
            idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(t))))
            out[f"ndcg@{k}"] += dcg / idcg
    return {m: v / n for m, v in out.items()}


@pytest.mark.parametrize("protocol", ["rlmrec", "cllm4rec"])
@pytest.mark.parametrize("integer_scores", [False, True])
def test_chunked_equals_unchunked_and_brute_force(protocol, integer_scores):
    rng = np.random.default_rng(0)
    n_users, n_items = 60, 150
    scores = (rng.integers(0, 4, (n_users, n_items)) if integer_scores  # many ties
              else rng.standard_normal((n_users, n_items))).astype(np.float32)
    train = sp.csr_matrix((rng.random((n_users, n_items)) < 0.1).astype(np.float32))
    test_dense = (rng.random((n_users, n_items)) < 0.05) & (train.toarray() == 0)
    test_dense[:5] = False  # some users without test items
    test = sp.csr_matrix(test_dense.astype(np.float32))
    p = get_protocol(protocol)
    full = evaluate(matrix_scorer(scores), test, train, protocol=protocol, chunk_size=10_000)
    ref = brute_force(scores, train, test, p)
    for m in p.metric_names:
        assert full[m] == pytest.approx(ref[m], abs=1e-9)
    for chunk in (1, 7, 33):
        m = evaluate(matrix_scorer(scores), test, train, protocol=protocol, chunk_size=chunk)
        for k in p.metric_names:
            assert m[k] == pytest.approx(full[k], abs=1e-12)
        assert m["users_excluded"] == full["users_excluded"] >= 5


def test_sums_combine_across_workers_and_roundtrip():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((40, 50)).astype(np.float32)
    train = sp.csr_matrix((rng.random((40, 50)) < 0.1).astype(np.float32))
    test = sp.csr_matrix((rng.random((40, 50)) < 0.1).astype(np.float32))
    users = np.arange(40)
    parts = [ranking_sums(matrix_scorer(scores), test, train, users=u, chunk_size=8)
             for u in np.array_split(users, 3)]
    combined = finalize(parts)
    whole = evaluate(matrix_scorer(scores), test, train)
    for k in PROTOCOLS["rlmrec"].metric_names:
        assert combined[k] == pytest.approx(whole[k], abs=1e-12)
    assert combined["users_evaluated"] + combined["users_excluded"] == 40
    t = parts[0].to_tensor()
    back = RankingSums.from_tensor("rlmrec", t)
    assert back == parts[0]
    # all-reduce = elementwise sum of the tensors
    total = RankingSums.from_tensor("rlmrec", sum(p.to_tensor() for p in parts))
    assert finalize(total)["recall@20"] == pytest.approx(whole["recall@20"], abs=1e-12)


def test_errors_and_edge_cases():
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        evaluate(by_id_scorer(), TEST, TRAIN, protocol="nope")
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda u: torch.zeros(len(u), 3), TEST, TRAIN)
    # nobody has held-out items: zeros, every user excluded
    m = evaluate(by_id_scorer(), csr({}, 4), TRAIN)
    assert m["recall@20"] == 0.0 and m["users_excluded"] == 4 and m["users_evaluated"] == 0
    # fewer items than k: k is capped
    m = evaluate(by_id_scorer(5), csr({0: [4]}, 1, 5), None)
    assert m["recall@5"] == 1.0 and m["ndcg@20"] == pytest.approx(1 / math.log2(6))
