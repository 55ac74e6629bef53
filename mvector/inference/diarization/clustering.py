"""Group window embeddings by speaker, estimating how many speakers there are when not told.

Long recordings use spectral clustering of a pruned cosine affinity with the eigengap rule for the
speaker count; short ones (few windows, where a graph Laplacian's spectrum is too noisy to read)
use average-linkage agglomerative clustering cut at a cosine distance. This is the recipe of
3D-Speaker's diarization; scikit-learn does the clustering itself.
"""
import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from mvector.errors import ConfigError, MVectorError


def _sklearn_cluster():
    try:
        from sklearn import cluster
    except ImportError as exc:
        raise MVectorError("speaker diarization needs scikit-learn: pip install 'mvector-sv[diarization]'") from exc
    return cluster


@dataclass(frozen=True)
class SpeakerClustering:
    """``spectral_min_windows``: from this many windows on, spectral clustering; below it,
    agglomerative clustering that joins clusters while their mean cosine distance is under
    ``ahc_distance``. ``keep_neighbours``: the fraction of each window's most similar windows kept
    in the spectral affinity (at least ``min_neighbours``). Clusters smaller than
    ``min_cluster_fraction`` of the windows are folded into the most similar larger one, and
    clusters whose centroids are closer than ``merge_cosine`` are joined. The eigengap rule looks
    for at most ``eigengap_max_speakers`` speakers unless ``max_speakers`` says otherwise (past
    the first few, the Laplacian's eigenvalues grow in jumps that are not speakers). More windows
    than ``max_points`` (about 40 minutes of speech) are averaged in runs of consecutive windows
    before clustering, so memory stays bounded (an affinity matrix grows with the square), and
    then each window joins the cluster whose centroid is nearest."""

    spectral_min_windows: int = 40
    ahc_distance: float = 0.7
    keep_neighbours: float = 0.1
    min_neighbours: int = 6
    min_cluster_fraction: float = 0.05
    merge_cosine: float = 0.55
    eigengap_max_speakers: int = 10
    max_points: int = 3000

    def __call__(self, embeddings: np.ndarray, num_speakers=None, min_speakers=1, max_speakers=None) -> np.ndarray:
        """A label ``0..k-1`` per row of ``embeddings`` (L2-normalised ``[N, E]``)."""
        count = len(embeddings)
        given_max = max_speakers is not None or num_speakers is not None
        max_speakers = count if max_speakers is None else min(max_speakers, count)
        if num_speakers is not None:
            min_speakers = max_speakers = min(num_speakers, count)
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        if max_speakers <= 1 or count < 2:
            return np.zeros(count, dtype=np.int64)
        points = _grouped(embeddings, self.max_points)
        if len(points) >= self.spectral_min_windows:
            bound = max_speakers if given_max else min(max_speakers, max(min_speakers, self.eigengap_max_speakers))
            labels = self._spectral(points, min_speakers, bound)
        else:
            labels = self._agglomerative(points, min_speakers, max_speakers)
        if len(points) < count:  # each window to the nearest centroid of the clusters of its groups
            names = np.unique(labels)
            labels = names[np.argmax(embeddings @ _centroids(points, labels, names).T, axis=1)]
        if num_speakers is None:
            labels = self._tidy(embeddings, labels, min_speakers)
        return _relabel_in_order(labels)

    def _spectral(self, embeddings, min_speakers, max_speakers):
        affinity = embeddings @ embeddings.T
        keep = min(len(affinity), max(self.min_neighbours, math.ceil(self.keep_neighbours * len(embeddings))))
        # Each row keeps its `keep` most similar windows; the matrix is changed in place, as it grows with the square.
        kth = np.partition(affinity, len(affinity) - keep, axis=1)[:, len(affinity) - keep]
        affinity[affinity < kth[:, None]] = 0.0
        affinity += affinity.T
        affinity *= 0.5
        np.clip(affinity, 0.0, None, out=affinity)
        degrees = affinity.sum(axis=1)
        affinity *= -1.0
        affinity[np.diag_indices_from(affinity)] += degrees  # now the Laplacian D - A
        max_speakers = min(max_speakers, len(affinity) - 1)
        values, vectors = scipy.linalg.eigh(affinity, subset_by_index=[0, max_speakers], overwrite_a=True)
        if min_speakers == max_speakers:
            speakers = max_speakers
        else:  # the count before the largest jump among the smallest eigenvalues
            gaps = np.diff(values[: max_speakers + 1])
            speakers = int(np.argmax(gaps[min_speakers - 1:])) + min_speakers
        if speakers <= 1:
            return np.zeros(len(embeddings), dtype=np.int64)
        spectral = vectors[:, :speakers]
        return _sklearn_cluster().KMeans(n_clusters=speakers, n_init=10, random_state=0).fit_predict(spectral)

    def _agglomerative(self, embeddings, min_speakers, max_speakers):
        cluster = _sklearn_cluster()
        labels = cluster.AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                                 distance_threshold=self.ahc_distance).fit_predict(embeddings)
        found = len(np.unique(labels))
        if not min_speakers <= found <= max_speakers:
            wanted = min(max(found, min_speakers), max_speakers)
            labels = cluster.AgglomerativeClustering(n_clusters=wanted, metric="cosine",
                                                     linkage="average").fit_predict(embeddings)
        return labels

    def _tidy(self, embeddings, labels, min_speakers):
        """Fold tiny clusters into their nearest neighbour and join near-duplicate clusters, never
        going below ``min_speakers``."""
        labels = labels.copy()
        while len(np.unique(labels)) > max(1, min_speakers):
            names, sizes = np.unique(labels, return_counts=True)
            centroids = _centroids(embeddings, labels, names)
            similarity = centroids @ centroids.T
            np.fill_diagonal(similarity, -np.inf)
            smallest = int(np.argmin(sizes))
            if sizes[smallest] < self.min_cluster_fraction * len(labels):
                labels[labels == names[smallest]] = names[int(np.argmax(similarity[smallest]))]
                continue
            first, second = np.unravel_index(int(np.argmax(similarity)), similarity.shape)
            if similarity[first, second] < self.merge_cosine:
                break
            labels[labels == names[second]] = names[first]
        return labels


def _grouped(embeddings, most: int) -> np.ndarray:
    """``embeddings`` as is when there are at most ``most``, else means of runs of consecutive ones."""
    if len(embeddings) <= most:
        return embeddings
    size = math.ceil(len(embeddings) / most)
    starts = np.arange(0, len(embeddings), size)
    means = np.add.reduceat(embeddings, starts, axis=0) / np.diff(np.append(starts, len(embeddings)))[:, None]
    return (means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _centroids(embeddings, labels, names) -> np.ndarray:
    centroids = np.stack([embeddings[labels == name].mean(axis=0) for name in names])
    return centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)


def _relabel_in_order(labels) -> np.ndarray:
    """Labels renumbered 0, 1, ... in order of first appearance, so speaker 1 is whoever speaks first."""
    order = {}
    for label in labels.tolist():
        order.setdefault(label, len(order))
    return np.array([order[label] for label in labels.tolist()], dtype=np.int64)


def check_speaker_counts(num_speakers, min_speakers, max_speakers) -> None:
    """ConfigError unless the counts are positive integers with min <= max (None: not given)."""
    for name, value in (("num_speakers", num_speakers), ("min_speakers", min_speakers), ("max_speakers", max_speakers)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be an integer >= 1 or None, got {value!r}")
    if min_speakers is None:
        raise ConfigError("min_speakers must be an integer >= 1, got None")
    if max_speakers is not None and min_speakers > max_speakers:
        raise ConfigError(f"min_speakers ({min_speakers}) is more than max_speakers ({max_speakers})")
