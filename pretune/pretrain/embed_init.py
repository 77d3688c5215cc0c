"""Initial token embeddings from corpus co-occurrence statistics (PPMI + truncated SVD).

A masked LM trained from random embeddings first spends hundreds of steps predicting word frequencies only; on a CPU
budget that is a large share of pretraining. Counting which tokens occur near which in the training shards and
factorising the positive pointwise mutual information matrix (Levy, Goldberg and Dagan, 2015: window-weighted counts,
context distribution smoothing 0.75, the factors scaled by the square root of the singular values) gives every token
a distributional vector in seconds; the masked LM starts from those instead of noise.

    counts[a, b] = sum over token pairs (a at i, b at i+d or i-d, same document, 1 <= d <= window) of 1 / d
    ppmi[a, b]   = max(0, log(counts[a, b] * total / (row[a] * smoothed_col[b])))
    vectors      = U[:, :dim] * sqrt(S[:dim])           # [V, dim], rescaled to the model's init std
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.utils.extmath import randomized_svd
from threadpoolctl import threadpool_limits

EMBED_INITS = ("auto", "ppmi", "random")  # auto: ppmi for a model trained from scratch
CHUNK_TOKENS = 1_000_000  # tokens counted at a time: a few hundred MB at most on any corpus
CONTEXT_ALPHA = 0.75


def cooccurrence_counts(tokens: np.ndarray, doc_offsets: np.ndarray, vocab_size: int, window: int,
                        max_tokens: int) -> sp.csr_matrix:
    """[V, V] symmetric window-weighted co-occurrence counts within documents, over the first `max_tokens` tokens."""
    n = min(len(tokens), max_tokens)
    total = sp.csr_matrix((vocab_size, vocab_size), dtype=np.float64)
    for start in range(0, n, CHUNK_TOKENS):
        stop = min(n, start + CHUNK_TOKENS + window)  # overlap: pairs across the chunk border are counted once
        ids = np.asarray(tokens[start:stop], dtype=np.int64)
        docs = np.searchsorted(doc_offsets, np.arange(start, stop), side="right")  # document of each token
        rows, cols, vals = [], [], []
        for d in range(1, window + 1):
            first = min(len(ids) - d, CHUNK_TOKENS)  # pairs (i, i + d) whose first token is in this chunk
            if first <= 0:
                break
            same = docs[:first] == docs[d:d + first]
            a, b = ids[:first][same], ids[d:d + first][same]
            w = np.full(a.shape, 1.0 / d)
            rows += [a, b]
            cols += [b, a]
            vals += [w, w]
        if rows:
            total = total + sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                          shape=(vocab_size, vocab_size))
    return total


def ppmi(counts: sp.csr_matrix, alpha: float = CONTEXT_ALPHA) -> sp.csr_matrix:
    """Positive PMI with the context distribution raised to `alpha` (rare contexts get less inflated PMI)."""
    coo = counts.tocoo()
    total = coo.data.sum()
    if total <= 0:
        return sp.csr_matrix(counts.shape)
    row = np.asarray(counts.sum(axis=1)).ravel()
    col = np.asarray(counts.sum(axis=0)).ravel() ** alpha
    col /= col.sum()
    pmi = np.log(coo.data / total) - np.log(row[coo.row] / total) - np.log(col[coo.col])
    keep = pmi > 0
    return sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape)


def ppmi_embeddings(tokens: np.ndarray, doc_offsets: np.ndarray, vocab_size: int, dim: int, std: float,
                    window: int = 4, max_tokens: int = 20_000_000, seed: int = 0,
                    keep: np.ndarray | None = None) -> np.ndarray | None:
    """[vocab_size, dim] float32 vectors with standard deviation `std` over the tokens seen, or None when the corpus
    has too few distinct co-occurring tokens to factorise. Rows of unseen tokens (and those `keep` marks, e.g. the
    special tokens) are NaN: the caller keeps their random initialisation."""
    matrix = ppmi(cooccurrence_counts(tokens, doc_offsets, vocab_size, window, max_tokens))
    seen = matrix.getnnz(axis=1) > 0  # [V] tokens with some positive association (ppmi stores only those)
    if keep is not None:
        seen &= ~keep
    if seen.sum() <= dim:
        return None
    with threadpool_limits(limits=1):  # the same last bits under any BLAS thread count: a resumed run, a rank
        u, s, _ = randomized_svd(matrix[seen], n_components=dim, n_iter=5, random_state=seed)
    vectors = u * np.sqrt(s)  # [seen, dim]
    vectors *= std / vectors.std()
    out = np.full((vocab_size, dim), np.nan, dtype=np.float32)
    out[seen] = vectors
    return out
