"""Top-k cosine search over voiceprints, exact, and fast for large libraries.

Scoring every voiceprint is one pass over a float32 matrix: memory-bound, about 5 ms for 100,000
users on this project's 2-core machine. From ``FAISS_MIN_ROWS`` rows on, when faiss is installed,
a half-precision faiss copy (half the bytes to read) proposes ``CANDIDATES`` rows and those are
rescored in float32, so the returned scores are exact and the top-1 equals the exhaustive one
unless fp16 rounding (~1e-3) pushes the true best below 32 others.
"""

import numpy as np

try:
    import faiss
except ImportError:  # optional: without it every search is the exhaustive float32 product
    faiss = None
else:
    # One query is a single memory-bound pass: OpenMP threads only add wake-ups, several times
    # slower on a busy machine (bench/search.py measures it).
    faiss.omp_set_num_threads(1)

FAISS_MIN_ROWS = 20_000
CANDIDATES = 32


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first; argpartition avoids a full sort."""
    if k == 1:
        return np.array([int(np.argmax(scores))])
    if k < len(scores):
        best = np.argpartition(-scores, k - 1)[:k]
        return best[np.argsort(-scores[best], kind="stable")]
    return np.argsort(-scores, kind="stable")


def exhaustive(matrix: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    # vecdot runs on the calling thread: BLAS gemv would wake worker threads, which costs more than
    # the whole product for small libraries and, on a busy machine, up to a scheduler slice.
    scores = np.vecdot(matrix, query)
    best = top_k(scores, k)
    return best, scores[best]


class SearchIndex:
    """Searches the first ``count`` rows of a matrix the caller owns and mutates.

    The caller reports changes: ``appended(row)`` after writing a new last row, ``changed()``
    after anything else; the faiss copy is extended or rebuilt lazily at the next search.
    """

    def __init__(self):
        self._faiss = None
        self._rows = 0  # rows of the matrix the faiss copy holds

    def changed(self) -> None:
        self._faiss, self._rows = None, 0

    def appended(self, matrix: np.ndarray, row: int) -> None:
        if self._faiss is not None and row == self._rows:
            self._faiss.add(matrix[row:row + 1])
            self._rows += 1
        else:
            self.changed()

    def search(self, matrix: np.ndarray, count: int, query: np.ndarray, k: int):
        """``(rows, scores)`` of the ``k`` best of ``matrix[:count]`` for ``query``, best first."""
        if faiss is None or count < FAISS_MIN_ROWS or k >= CANDIDATES:
            return exhaustive(matrix[:count], query, k)
        if self._faiss is None or self._rows != count:
            self._faiss = faiss.IndexScalarQuantizer(matrix.shape[1], faiss.ScalarQuantizer.QT_fp16,
                                                     faiss.METRIC_INNER_PRODUCT)
            self._faiss.add(np.ascontiguousarray(matrix[:count]))
            self._rows = count
        _, candidates = self._faiss.search(query[None], CANDIDATES)
        candidates = candidates[0][candidates[0] >= 0]
        scores = matrix[candidates] @ query
        best = top_k(scores, k)
        return candidates[best], scores[best]
