"""Exact k-nearest-neighbour retrieval with bounded memory (torch, or FAISS when installed).

VS2++ retrieves, for every query image, its nearest train images by cosine similarity of
retrieval embeddings (DINOv2 or CLIP). The database is a whole train split (up to 100k x 768), the
queries a whole test split: a dense [Q, N] similarity matrix would take gigabytes, so

- the torch backend multiplies a chunk of queries by a chunk of the database at a time into one
  preallocated buffer ([chunk_queries, chunk_db] floats), keeps each block's top candidates and
  merges them, so memory is O(chunk_queries * chunk_db), not O(Q * N);
- the FAISS backend searches an `IndexFlatIP` (exact, brute force) chunk of queries by chunk.

**Same answer from both backends.** Two float32 GEMMs (torch's and FAISS's BLAS) round differently,
so their orders disagree wherever two similarities are within rounding of each other (duplicate
images are common in real train splits). Both backends therefore only *propose* k + margin
candidates; the candidates are re-scored in float64 from the same normalised float32 vectors and
sorted by (similarity descending, database index ascending). The proposal is then *verified*: an item
left out has a float32 score at most the lowest proposed score f_min, hence a true score at most
f_min + tol, where tol = (d * 2^-24 * 1.01 + 2 u_in) ||q|| max_n ||r_n|| bounds the float32
GEMM's rounding error (u_in > 0 when torch may use TF32/bf16 matmuls). If the k-th re-scored
similarity exceeds that, the top k is exact; otherwise (more than `margin` items tied within
rounding of the k-th), the query is searched again with a 4x margin, up to the whole database.
So the result is the exact top k of the float64 similarities of the float32 vectors, with
deterministic ties, whatever the backend, chunk sizes or thread count.
"""

from __future__ import annotations

import importlib.util
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.errors import SparsesteerError, unknown

Metric = Literal["cosine", "ip"]
Backend = Literal["auto", "torch", "faiss"]
METRICS = ("cosine", "ip")
BACKENDS = ("auto", "torch", "faiss")

# Tuned with benchmarks/knn.py on a 2-core CPU (100k x 768 database, top 50): the GEMM runs at the
# same rate for database blocks of 8k..100k rows, while top-k costs less per query the fewer blocks
# there are (0.33 s per 1024 queries at 16k, 0.23 s at 32k, 0.12 s at 100k). 1024 x 32768 = 128 MiB.
CHUNK_QUERIES = 1024
CHUNK_DB = 32768
MARGIN = 16
"""Extra candidates proposed per query beyond k (see the module docstring)."""
_RESCORE_BYTES = 1 << 25  # float64 re-scoring buffer: 32 MiB (fewer, larger ops: robust when cores are shared)


class Neighbours(NamedTuple):
    """The k nearest database items of each query, nearest first."""

    similarity: Tensor
    """[Q, k] float32 similarity (cosine or inner product), descending along each row."""
    indices: Tensor
    """[Q, k] int64 database row indices; equal similarities are ordered by smaller index."""


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise unknown("kNN backend", backend, BACKENDS)
    if backend == "auto":
        return "faiss" if faiss_available() else "torch"
    if backend == "faiss" and not faiss_available():
        raise SparsesteerError(
            "kNN backend 'faiss' needs the faiss package: pip install faiss-cpu (or use --knn-backend torch)"
        )
    return backend


def _input_roundoff() -> float:
    """Unit roundoff of the *inputs* of a float32 matmul under torch's precision setting (0 = exact
    float32 inputs; TF32 keeps 10 mantissa bits, bf16 7)."""
    return {"highest": 0.0, "high": 2.0**-11, "medium": 2.0**-8}.get(torch.get_float32_matmul_precision(), 2.0**-8)


class Index:
    """A normalised (cosine) or raw (ip) float32 database, searchable many times.

    The database lives on its own device for the torch backend (CPU or GPU); the FAISS backend
    holds an `IndexFlatIP` over a CPU copy. Building the index is cheap (a normalisation and, for
    FAISS, a copy); searching costs one pass over the database per query chunk.
    """

    def __init__(
        self,
        database_ne: Tensor,
        *,
        metric: Metric = "cosine",
        backend: Backend = "auto",
        chunk_queries: int = CHUNK_QUERIES,
        chunk_db: int = CHUNK_DB,
        margin: int = MARGIN,
    ):
        if metric not in METRICS:
            raise unknown("kNN metric", metric, METRICS)
        self.backend = _resolve_backend(backend)
        if not isinstance(database_ne, Tensor):
            database_ne = torch.as_tensor(database_ne)
        if database_ne.ndim != 2:
            raise SparsesteerError(f"kNN database must be 2-D [N, d], got shape {tuple(database_ne.shape)}")
        if database_ne.shape[0] == 0 or database_ne.shape[1] == 0:
            raise SparsesteerError(f"kNN database is empty (shape {tuple(database_ne.shape)})")
        for name, v in (("chunk_queries", chunk_queries), ("chunk_db", chunk_db)):
            if int(v) < 1:
                raise SparsesteerError(f"kNN {name} must be >= 1, got {v}")
        if margin < 0:
            raise SparsesteerError(f"kNN margin must be >= 0, got {margin}")
        self.metric = metric
        self.chunk_queries, self.chunk_db, self.margin = int(chunk_queries), int(chunk_db), int(margin)
        db = self._prepare(database_ne, "database")
        self._database_ne = db
        self._max_norm = float(db.norm(dim=1).max()) if metric == "ip" else 1.0
        self._faiss = None
        self._buf: Tensor | None = None  # the torch backend's similarity block, allocated on first search
        if self.backend == "faiss":
            import faiss

            db = db.cpu().contiguous()
            self._faiss = faiss.IndexFlatIP(db.shape[1])
            self._faiss.add(db.numpy())
            try:  # re-score from FAISS's own copy (zero-copy view) rather than keep a second one
                n, d = db.shape
                self._database_ne = torch.from_numpy(faiss.rev_swig_ptr(self._faiss.get_xb(), n * d).reshape(n, d))
            except AttributeError:
                self._database_ne = db

    @property
    def n(self) -> int:
        return int(self._database_ne.shape[0])

    @property
    def d(self) -> int:
        return int(self._database_ne.shape[1])

    def _prepare(self, x: Tensor, what: str) -> Tensor:
        x = x.detach().to(torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise SparsesteerError(f"kNN {what} contains NaN or infinite values (shape {tuple(x.shape)})")
        if self.metric == "cosine":
            x = F.normalize(x, dim=1)
        return x.contiguous()

    def search(
        self, queries_qe: Tensor, k: int, *, exclude_self: bool = False, query_ids_q: Tensor | None = None
    ) -> Neighbours:
        """The k most similar database rows of each query (exact; see the module docstring).

        `exclude_self`: the queries are database rows (query i is row `query_ids_q[i]`, or row i
        when `query_ids_q` is None) and must not retrieve themselves, e.g. validation queries drawn
        from the train split that is also the database. Rows identical to the query are still found.
        """
        if not isinstance(queries_qe, Tensor):
            queries_qe = torch.as_tensor(queries_qe)
        if queries_qe.ndim != 2 or queries_qe.shape[1] != self.d:
            raise SparsesteerError(
                f"kNN width mismatch: queries have shape {tuple(queries_qe.shape)}, the database {tuple(self._database_ne.shape)} "
                "(both must be [rows, d] with the same d: embed queries and database with the same model)"
            )
        Q = int(queries_qe.shape[0])
        if Q == 0:
            raise SparsesteerError(f"kNN: no queries (shape {tuple(queries_qe.shape)})")
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise SparsesteerError(f"kNN: k must be a positive integer, got {k!r}")
        k = int(k)
        ids = None
        if query_ids_q is not None and not exclude_self:
            raise SparsesteerError("kNN: query_ids_q only means something with exclude_self=True")
        if exclude_self:
            if query_ids_q is None:
                if Q != self.n:
                    raise SparsesteerError(
                        f"kNN exclude_self with {Q} queries and {self.n} database rows: pass query_ids_q "
                        "(the database row of each query) when the queries are a subset of the database"
                    )
                ids = torch.arange(Q)
            else:
                ids = torch.as_tensor(query_ids_q).long().cpu().reshape(-1)
                if ids.shape[0] != Q:
                    raise SparsesteerError(f"kNN: query_ids_q has {ids.shape[0]} entries for {Q} queries")
                if Q and (int(ids.min()) < 0 or int(ids.max()) >= self.n):
                    raise SparsesteerError(
                        f"kNN: query_ids_q must be database rows in [0, {self.n}), got range [{int(ids.min())}, {int(ids.max())}]"
                    )
        eligible = self.n - (1 if exclude_self else 0)
        if k > eligible:
            extra = " (excluding each query itself)" if exclude_self else ""
            raise SparsesteerError(f"kNN: k={k} but the database has only {eligible} rows to return{extra}")

        q = self._prepare(queries_qe, "queries").to(self._database_ne.device)
        tol_q = (1.01 * self.d * 2.0**-24 + 2 * _input_roundoff()) * q.norm(
            dim=1
        ).double().cpu() * self._max_norm + 1e-12
        out_sim = torch.empty(Q, k, dtype=torch.float32)
        out_idx = torch.empty(Q, k, dtype=torch.int64)
        todo = torch.arange(Q)
        margin = self.margin
        while todo.numel():
            n_cand = min(k + margin + (1 if exclude_self else 0), self.n)
            complete = n_cand >= self.n  # every row is a candidate: nothing to verify
            failed = []
            # keep [queries, n_cand] candidate buffers within the similarity block's budget
            step = max(1, min(self.chunk_queries, self.chunk_queries * self.chunk_db // n_cand))
            for s in range(0, todo.numel(), step):
                rows = todo[s : s + step]
                q_c = q[rows.to(q.device)]
                ids_c = None if ids is None else ids[rows]
                fast_cc, cand_cc = self._propose(q_c, n_cand, ids_c)
                score_cc = _rescore(q_c, self._database_ne, cand_cc)
                if ids_c is not None:
                    score_cc[cand_cc == ids_c[:, None]] = -torch.inf
                sim, idx = _sort_desc_by_index(score_cc, cand_cc, k)
                if not complete:
                    f_min = fast_cc.min(dim=1).values.double()
                    ok = sim[:, k - 1] > f_min + tol_q[rows]
                    failed.append(rows[~ok])
                out_sim[rows] = sim.float()
                out_idx[rows] = idx
            todo = torch.cat(failed) if failed else todo[:0]
            margin = 4 * margin + k
        return Neighbours(out_sim, out_idx)

    def _propose(self, q_cd: Tensor, n_cand: int, ids_c: Tensor | None) -> tuple[Tensor, Tensor]:
        """(float32 scores [c, n_cand], database indices [c, n_cand]) of the best candidates, both CPU.
        With `ids_c`, each query's own row is excluded (torch) or may be among them (FAISS: the
        caller drops it after re-scoring)."""
        if self._faiss is not None:
            D, I = self._faiss.search(q_cd.cpu().contiguous().numpy(), n_cand)
            return torch.from_numpy(D), torch.from_numpy(I).long()
        db = self._database_ne
        c = q_cd.shape[0]
        if self._buf is None or self._buf.shape[0] < c:  # reused: a fresh 128 MiB buffer costs ~5% in page faults
            self._buf = torch.empty(
                max(c, self.chunk_queries), min(self.chunk_db, self.n), dtype=torch.float32, device=db.device
            )
        buf = self._buf[:c]
        vals, idxs = [], []
        for start in range(0, self.n, self.chunk_db):
            block = db[start : start + self.chunk_db]
            sim = buf[:, : block.shape[0]]
            torch.mm(q_cd, block.T, out=sim)
            if ids_c is not None:
                ids_dev = ids_c.to(db.device)
                hit = (ids_dev >= start) & (ids_dev < start + block.shape[0])
                if bool(hit.any()):
                    rows = hit.nonzero().squeeze(1)
                    sim[rows, ids_dev[rows] - start] = -torch.inf
            v, i = sim.topk(min(n_cand, block.shape[0]), dim=1, sorted=False)
            vals.append(v)
            idxs.append(i + start)
        v, i = torch.cat(vals, 1), torch.cat(idxs, 1)
        if v.shape[1] > n_cand:
            v, j = v.topk(n_cand, dim=1, sorted=False)
            i = i.gather(1, j)
        return v.cpu(), i.cpu()


def _rescore(q_cd: Tensor, db_nd: Tensor, cand_cc: Tensor) -> Tensor:
    """float64 similarity of each query with each of its candidates [c, n_cand] (CPU).

    A pure function of the two float32 vectors, whatever the chunking, device or thread count:
    products of float32 numbers are exact in float64, and they are summed by a fixed halving
    tree of elementwise adds (no library reduction, whose order may depend on shapes). So equal
    vectors get bit-equal scores, and both backends agree bit for bit."""
    c, n_cand = cand_cc.shape
    d = q_cd.shape[1]
    out = torch.empty(c, n_cand, dtype=torch.float64, device=db_nd.device)
    per_query = _RESCORE_BYTES // (d * 8)  # candidate rows that fit the buffer
    step_c = max(1, min(n_cand, per_query))  # candidates per pass (all of them, except after a failed verification)
    step_q = max(1, min(c, per_query // step_c))
    buf = torch.empty(step_q, step_c, d, dtype=torch.float64, device=db_nd.device)
    cand_cc = cand_cc.to(db_nd.device)
    for s in range(0, c, step_q):
        q64 = q_cd[s : s + step_q, None, :].double()
        for t in range(0, n_cand, step_c):
            cand = cand_cc[s : s + step_q, t : t + step_c]
            p = buf[: cand.shape[0], : cand.shape[1]]
            p.copy_(db_nd[cand])
            p.mul_(q64)
            h = d
            while h > 1:
                m = h // 2
                p[..., :m].add_(p[..., h - m : h])
                h -= m
            out[s : s + step_q, t : t + step_c] = p[..., 0]
    return out.cpu()


def _sort_desc_by_index(score_cc: Tensor, cand_cc: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top k of each row by score descending, ties by smaller index: sort by index, then stably by -score."""
    cand_sorted, perm = cand_cc.sort(dim=1)
    score_sorted = score_cc.gather(1, perm)
    order = (-score_sorted).sort(dim=1, stable=True).indices[:, :k]
    return score_sorted.gather(1, order), cand_sorted.gather(1, order)


def knn(
    queries_qe: Tensor,
    database_ne: Tensor,
    k: int,
    *,
    metric: Metric = "cosine",
    chunk_queries: int = CHUNK_QUERIES,
    chunk_db: int = CHUNK_DB,
    exclude_self: bool = False,
    query_ids_q: Tensor | None = None,
    backend: Backend = "auto",
) -> Neighbours:
    """Exact top-k database rows of each query: cosine (both sides L2-normalised) or inner product.

    Results are sorted by similarity, ties by smaller index, identical between backends. Memory is
    O(chunk_queries * chunk_db) for the torch backend. `exclude_self` (with `query_ids_q` when the
    queries are a subset of the database rows) keeps a query from retrieving its own row.
    """
    index = Index(database_ne, metric=metric, backend=backend, chunk_queries=chunk_queries, chunk_db=chunk_db)
    return index.search(queries_qe, k, exclude_self=exclude_self, query_ids_q=query_ids_q)
