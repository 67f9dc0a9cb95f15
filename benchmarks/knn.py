"""Queries/s of exact top-k retrieval (`sparsesteer.steering.retrieval.knn`) vs a plain matmul, same run.

Setting of VS2++ on Tiny-ImageNet: a 100,000 x 768 float32 database (random data), 10,000 queries,
top 50 by cosine. The reference is the similarity matmul alone, queries @ db.T, without top-k,
normalisation or re-scoring, measured in the same run in two blockings:
- `matmul [cq x N]`: query chunks against the whole database into one preallocated [cq, N]
  buffer (the full [Q, N] product would need 4 GB);
- `matmul [cq x cdb]`: the exact blocking of our torch backend, isolating what top-k, the merge
  and the float64 re-scoring cost on top of the same GEMMs.
Target: our kNN at >= 60% of the matmul's queries/s. FAISS (IndexFlatIP) is timed too when
installed, and both backends' results are compared (they must be identical). The methods take
turns on each slice of 2,048 queries (rotating the order), so that load from other processes hits
them alike; the table shows the median over passes. `setup s`: building the index (normalising
the database; FAISS: adding it), not included in `seconds`.

    python benchmarks/knn.py [--n 100000] [--d 768] [--queries 10000] [--k 50] [--repeats 1] [--slice 2048]
                             [--chunk-queries 1024] [--chunk-db 32768] [--sweep]

`--sweep` times the torch backend over a few chunk shapes on 2,048 queries, each against the reference
matmul timed alternately with it (used to pick the defaults).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sparsesteer.steering.retrieval import CHUNK_DB, CHUNK_QUERIES, Index, faiss_available


def matmul_blocks(q: torch.Tensor, db: torch.Tensor, cq: int, cdb: int) -> None:
    buf = torch.empty(min(cq, q.shape[0]), min(cdb, db.shape[0]))
    for s in range(0, q.shape[0], cq):
        qc = q[s : s + cq]
        for t in range(0, db.shape[0], cdb):
            block = db[t : t + cdb]
            torch.mm(qc, block.T, out=buf[: qc.shape[0], : block.shape[0]])


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="database rows")
    ap.add_argument("--d", type=int, default=768, help="embedding width")
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=1, help="passes over all queries (median reported)")
    ap.add_argument("--slice", type=int, default=2048, help="queries per interleaving step")
    ap.add_argument("--chunk-queries", type=int, default=CHUNK_QUERIES)
    ap.add_argument("--chunk-db", type=int, default=CHUNK_DB)
    ap.add_argument("--sweep", action="store_true", help="time chunk shapes instead")
    args = ap.parse_args()

    gen = torch.Generator().manual_seed(0)
    db = torch.randn(args.n, args.d, generator=gen)
    q = torch.randn(args.queries, args.d, generator=gen)
    print(
        f"database {args.n} x {args.d} float32, {args.queries} queries, top {args.k}, {torch.get_num_threads()} threads"
    )
    cq, cdb = args.chunk_queries, args.chunk_db

    if args.sweep:
        qs = q[:2048]
        print("| chunk_queries | chunk_db | queries/s | matmul queries/s | vs matmul |\n|---:|---:|---:|---:|---:|")
        for cq_, cdb_ in [
            (256, 16384),
            (512, 16384),
            (1024, 8192),
            (1024, 16384),
            (1024, 32768),
            (2048, 16384),
            (1024, 100_000),
        ]:
            index = Index(db, backend="torch", chunk_queries=cq_, chunk_db=cdb_)
            ref_t, knn_t = [], []
            for _ in range(args.repeats):  # alternate, so that noise hits both alike
                ref_t.append(timed(lambda: matmul_blocks(qs, db, 1024, args.n))[0])
                knn_t.append(timed(lambda: index.search(qs, args.k))[0])
            r, t = statistics.median(ref_t), statistics.median(knn_t)
            print(f"| {cq_} | {cdb_} | {qs.shape[0] / t:,.0f} | {qs.shape[0] / r:,.0f} | {r / t:.2f} |", flush=True)
        return

    t_torch, torch_index = timed(lambda: Index(db, backend="torch", chunk_queries=cq, chunk_db=cdb))
    setup = {f"knn torch ({cq} x {cdb})": t_torch}
    methods = {
        f"matmul [{cq} x N] (reference)": lambda qs: matmul_blocks(qs, db, cq, args.n),
        f"matmul [{cq} x {cdb}]": lambda qs: matmul_blocks(qs, db, cq, cdb),
        f"knn torch ({cq} x {cdb})": lambda qs: torch_index.search(qs, args.k),
    }
    if faiss_available():
        t_faiss, faiss_index = timed(lambda: Index(db, backend="faiss", chunk_queries=cq))
        setup["knn faiss (IndexFlatIP)"] = t_faiss
        methods["knn faiss (IndexFlatIP)"] = lambda qs: faiss_index.search(qs, args.k)
    # Each pass runs every method on the same slice of queries before moving to the next slice,
    # rotating the order, so that load from other processes hits all methods alike.
    names = list(methods)
    passes: dict[str, list[float]] = {m: [] for m in names}
    results: dict[str, list] = {m: [] for m in names}
    for r in range(args.repeats):
        total = dict.fromkeys(names, 0.0)
        for i, s in enumerate(range(0, args.queries, args.slice)):
            qs = q[s : s + args.slice]
            for j in range(len(names)):
                name = names[(i + j + r) % len(names)]
                t, out = timed(lambda: methods[name](qs))
                total[name] += t
                if r == 0 and out is not None:
                    results[name].append(out)
        for name in names:
            passes[name].append(total[name])
    ref = statistics.median(passes[names[0]])
    print("| method | seconds | queries/s | vs matmul | setup s |\n|---|---:|---:|---:|---:|")
    for name in names:
        t = statistics.median(passes[name])
        st = f"{setup[name]:.2f}" if name in setup else ""
        print(f"| {name} | {t:.2f} | {args.queries / t:,.0f} | {ref / t:.2f} | {st} |")
    knns = [torch.cat([o.indices for o in v]) for k_, v in results.items() if k_.startswith("knn")]
    sims = [torch.cat([o.similarity for o in v]) for k_, v in results.items() if k_.startswith("knn")]
    if len(knns) == 2:
        print(f"torch and faiss results identical: {torch.equal(knns[0], knns[1]) and torch.equal(sims[0], sims[1])}")


if __name__ == "__main__":
    main()
