"""The in-memory voiceprints of a library: one row per user, searched with one matrix product.
Every store (SQLite, PostgreSQL) keeps one, loaded from its rows and updated as users change."""
import numpy as np

from mvector.library.index import SearchIndex
from mvector.library.names import VoiceprintError


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def voiceprint(embeddings) -> np.ndarray:
    """A user's voiceprint: the renormalised mean of their (L2-normalised) enrolment embeddings,
    given as float32 byte strings or as an ``[N, E]`` array."""
    if not isinstance(embeddings, np.ndarray):
        embeddings = np.frombuffer(b"".join(embeddings), np.float32).reshape(len(embeddings), -1)
    return unit(embeddings.mean(0)).astype(np.float32)


def check_embedding(embedding, what: str) -> np.ndarray:
    """``embedding`` as a finite, non-zero float32 vector, L2-normalised; VoiceprintError otherwise."""
    try:
        vector = np.asarray(embedding, dtype=np.float32)
    except (TypeError, ValueError):
        raise VoiceprintError(f"{what}: not a numeric vector ({type(embedding).__name__})") from None
    if vector.ndim == 2 and vector.shape[0] == 1:
        vector = vector[0]
    if vector.ndim != 1 or len(vector) == 0:
        raise VoiceprintError(f"{what}: expected a 1-D vector, got shape {vector.shape}")
    if not np.isfinite(vector).all():
        raise VoiceprintError(f"{what}: contains NaN or Inf")
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        raise VoiceprintError(f"{what}: is all zeros")
    return (vector / norm).astype(np.float32)


class VoiceprintMatrix:
    """Names and voiceprints, row by row; not thread-safe on its own (stores hold a lock)."""

    def __init__(self):
        self._index = SearchIndex()
        self.load([])

    def load(self, rows) -> None:
        """From ``[(name, embedding bytes)]`` enrolment rows, grouped by user (a user's rows adjacent)."""
        self.names, self._row, self.count = [], {}, 0
        self._matrix = np.zeros((0, 0), np.float32)
        self._index.changed()
        if rows:
            names = [name for name, _ in rows]
            embeddings = np.frombuffer(b"".join(blob for _, blob in rows), np.float32).reshape(len(rows), -1)
            starts = np.flatnonzero([True] + [a != b for a, b in zip(names, names[1:])])
            self.names = [names[i] for i in starts]
            self._row = {name: i for i, name in enumerate(self.names)}
            self._matrix = unit(np.add.reduceat(embeddings, starts, axis=0)).astype(np.float32)
            self.count = len(self.names)

    def set(self, name: str, vector: np.ndarray) -> None:
        """Add or replace ``name``'s voiceprint."""
        row = self._row.get(name)
        if row is not None:
            self._matrix[row] = vector
            self._index.changed()
            return
        if self.count == len(self._matrix):
            # Room doubles, so n registrations copy the matrix O(log n) times.
            grown = np.zeros((max(8, 2 * self.count), len(vector)), np.float32)
            if self.count:
                grown[:self.count] = self._matrix[:self.count]
            self._matrix = grown
        row = self.count
        self.count += 1
        self.names.append(name)
        self._row[name] = row
        self._matrix[row] = vector
        self._index.appended(self._matrix, row)

    def drop(self, name: str) -> None:
        """Remove ``name``'s row by moving the last row into its place: O(E), order is irrelevant."""
        row = self._row.pop(name, None)
        if row is None:
            return
        last = self.count - 1
        if row != last:
            moved = self.names[last]
            self._matrix[row] = self._matrix[last]
            self.names[row] = moved
            self._row[moved] = row
        self._matrix[last] = 0.0
        del self.names[last:]
        self.count = last
        self._index.changed()

    def search(self, query: np.ndarray, top_k: int) -> list:
        """``[(name, cosine)]`` of the ``top_k`` closest voiceprints to the unit vector ``query``."""
        if self.count == 0:
            return []
        if len(query) != self._matrix.shape[1]:
            raise VoiceprintError(f"query embedding has {len(query)} dimensions but the library's "
                                  f"voiceprints have {self._matrix.shape[1]}")
        rows, scores = self._index.search(self._matrix, self.count, query, int(top_k))
        # float32 rounding can put a unit vectors' dot product a hair past 1: scores are cosines.
        return [(self.names[r], float(np.clip(s, -1.0, 1.0))) for r, s in zip(rows, scores)]


def check_top_k(top_k) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise VoiceprintError(f"top_k must be a positive integer, got {top_k!r}")
    return int(top_k)


class VoiceprintStore:
    """What every store shares on top of its own ``search`` and ``close``: recognition and the
    context-manager protocol."""

    def recognition(self, embedding: np.ndarray, threshold: float):
        """``(name, score)`` of the closest user when ``score >= threshold``, else ``(None, score)``;
        ``(None, None)`` for an empty library."""
        best = self.search(embedding, top_k=1)
        if not best:
            return None, None
        name, score = best[0]
        return (name, score) if score >= threshold else (None, score)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
