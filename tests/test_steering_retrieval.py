"""Exact kNN: against a float64 dense reference, FAISS vs torch bit-identical, self-exclusion, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsesteer.steering.retrieval import Index, Neighbours, faiss_available, knn
from sparsesteer.utils.errors import SparsesteerError

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss not installed")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Hundreds of tiny matmuls: on a busy 2-core machine every multi-threaded one waits for the
    other core (~10 ms), so run them on one thread (the results do not depend on it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    faiss_threads = None
    if faiss_available():
        import faiss

        faiss_threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(n)
    if faiss_threads is not None:
        import faiss

        faiss.omp_set_num_threads(faiss_threads)


def data(n=600, q=70, d=24, seed=0, dup=True):
    """Random database with deliberate duplicate rows (and queries equal to database rows)."""
    g = torch.Generator().manual_seed(seed)
    db = torch.randn(n, d, generator=g)
    qs = torch.randn(q, d, generator=g)
    if dup:
        db[[50, 300, 599]] = db[10].clone()  # 4 copies of row 10
        db[[201, 202]] = db[200] * 3.0  # same direction, larger norm: cosine ties, ip does not
        qs[0] = db[10]
        qs[1] = db[200]
        qs[2] = qs[3].clone()  # duplicate queries
    return qs, db


def reference(qs, db, k, metric="cosine", exclude_ids=None, group=1e-9):
    """float64 dense similarities of the float32 (normalised) vectors, ordered by (similarity desc,
    index asc); similarities are grouped at `group` so that exact duplicates tie whatever the
    summation order of the matmul (group=0: no grouping)."""
    if metric == "cosine":
        qs, db = F.normalize(qs, dim=1), F.normalize(db, dim=1)
    s = qs.double() @ db.double().T
    if exclude_ids is not None:
        s[torch.arange(len(exclude_ids)), exclude_ids] = -torch.inf
    key = torch.round(s / group) if group else s
    order = (-key).sort(dim=1, stable=True).indices[:, :k]  # columns start in index order
    return order, s.gather(1, order)


@pytest.mark.parametrize("metric", ["cosine", "ip"])
@pytest.mark.parametrize("chunks", [(1024, 16384), (7, 13), (64, 1)])
def test_torch_matches_dense_reference(metric, chunks):
    qs, db = data()
    k = 9
    nb = knn(qs, db, k, metric=metric, chunk_queries=chunks[0], chunk_db=chunks[1], backend="torch")
    ref_idx, ref_sim = reference(qs, db, k, metric)
    assert nb.indices.dtype == torch.int64 and nb.similarity.dtype == torch.float32
    assert nb.indices.shape == (qs.shape[0], k)
    assert torch.equal(nb.indices, ref_idx)
    torch.testing.assert_close(nb.similarity.double(), ref_sim, atol=1e-6, rtol=0)
    assert bool((nb.similarity[:, :-1] >= nb.similarity[:, 1:]).all())


def test_ties_go_to_smaller_index():
    qs, db = data()
    nb = knn(qs[:2], db, 4, backend="torch", chunk_db=97)
    assert nb.indices[0].tolist() == [10, 50, 300, 599]  # the 4 exact copies, by index
    assert len(set(nb.similarity[0].tolist())) == 1
    assert nb.indices[1, :3].tolist() == [200, 201, 202]  # same direction: cosine ties
    ip = knn(qs[1:2], db, 3, metric="ip", backend="torch")
    assert set(ip.indices[0].tolist()) >= {201, 202}  # inner product prefers the larger copies


@needs_faiss
@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_faiss_and_torch_identical(metric):
    qs, db = data(n=2000, q=150, d=32, seed=1)
    for k in (1, 10, 50):
        a = knn(qs, db, k, metric=metric, backend="torch", chunk_queries=37, chunk_db=301)
        b = knn(qs, db, k, metric=metric, backend="faiss", chunk_queries=64)
        assert torch.equal(a.indices, b.indices)
        assert torch.equal(a.similarity, b.similarity)
    ex_a = knn(db[:300], db, 10, exclude_self=True, query_ids_q=torch.arange(300), backend="torch", chunk_db=128)
    ex_b = knn(db[:300], db, 10, exclude_self=True, query_ids_q=torch.arange(300), backend="faiss")
    assert torch.equal(ex_a.indices, ex_b.indices) and torch.equal(ex_a.similarity, ex_b.similarity)


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=needs_faiss)])
def test_exclude_self(backend):
    _, db = data()
    ids = torch.tensor([10, 50, 200, 7, 599])
    nb = knn(db[ids], db, 6, exclude_self=True, query_ids_q=ids, backend=backend, chunk_db=64)
    ref_idx, _ = reference(db[ids], db, 6, exclude_ids=ids)
    assert torch.equal(nb.indices, ref_idx)
    assert not bool((nb.indices == ids[:, None]).any())
    assert nb.indices[0, :3].tolist() == [50, 300, 599]  # the copies of row 10 are still found
    # the whole database against itself
    full = knn(db, db, 3, exclude_self=True, backend=backend)
    assert not bool((full.indices == torch.arange(len(db))[:, None]).any())
    assert full.indices[10, :3].tolist() == [50, 300, 599]


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=needs_faiss)])
def test_too_many_ties_for_the_margin_are_searched_again(backend):
    """30 exact copies straddle the k-th place with no spare candidates (margin 0): the
    verification must notice and search again, so the smallest indices still win."""
    g = torch.Generator().manual_seed(3)
    db = torch.randn(500, 16, generator=g)
    copies = torch.randperm(500, generator=g)[:30]
    db[copies] = db[copies[0]].clone()
    q = db[copies[0]][None] + 1e-3 * torch.randn(1, 16, generator=g)
    index = Index(db, backend=backend, margin=0, chunk_db=50)
    nb = index.search(q, 5)
    assert nb.indices[0].tolist() == sorted(copies.tolist())[:5]
    # near-ties (within float32 rounding) are ordered by their float64 similarity
    db2 = db[copies[0]].repeat(40, 1) + 1e-6 * torch.randn(40, 16, generator=g)
    nb2 = Index(db2, backend=backend, margin=0).search(q, 10)
    assert torch.equal(nb2.indices, reference(q, db2, 10, group=0)[0])


def test_index_reuse_and_chunking_invariance():
    qs, db = data(seed=4)
    index = Index(db, backend="torch", chunk_queries=5, chunk_db=17)
    a = index.search(qs, 7)
    b = index.search(qs[10:20], 7)
    assert torch.equal(a.indices[10:20], b.indices) and torch.equal(a.similarity[10:20], b.similarity)
    assert isinstance(a, Neighbours) and index.n == 600 and index.d == 24
    k_all = knn(qs[:3], db[:20], 20, backend="torch")  # k = N: every row, still sorted
    assert sorted(k_all.indices[0].tolist()) == list(range(20))


def test_errors():
    qs, db = data()
    with pytest.raises(SparsesteerError, match=r"\(70, 24\).*\(600, 24\)|\(70, 23\).*\(600, 24\)"):
        knn(qs[:, :23], db, 3)
    with pytest.raises(SparsesteerError, match=r"k=601 .* 600 rows"):
        knn(qs, db, 601, backend="torch")
    with pytest.raises(SparsesteerError, match=r"599 rows to return \(excluding"):
        knn(db, db, 600, exclude_self=True, backend="torch")
    with pytest.raises(SparsesteerError, match="empty"):
        knn(qs, db[:0], 1)
    with pytest.raises(SparsesteerError, match="no queries"):
        knn(qs[:0], db, 1)
    with pytest.raises(SparsesteerError, match="positive integer"):
        knn(qs, db, 0)
    with pytest.raises(SparsesteerError, match="query_ids_q"):
        knn(qs, db, 3, exclude_self=True)
    bad = db.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(SparsesteerError, match="NaN"):
        knn(qs, bad, 3)
    with pytest.raises(SparsesteerError, match="did you mean 'cosine'"):
        knn(qs, db, 3, metric="cosin")
    with pytest.raises(SparsesteerError, match="kNN backend"):
        knn(qs, db, 3, backend="annoy")


def test_degenerate_queries_stay_exact():
    """A zero query ties with every row under cosine (all similarities 0): the verification keeps
    widening the candidate set up to the whole database; the answer is the first k rows."""
    _, db = data()
    q = torch.zeros(2, 24)
    q[1] = db[5]
    nb = Index(db, backend="torch", chunk_queries=2, chunk_db=64).search(q, 4)
    assert nb.indices[0].tolist() == [0, 1, 2, 3] and nb.similarity[0].tolist() == [0.0] * 4
    assert nb.indices[1, 0] == 5
