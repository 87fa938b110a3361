"""The round-based allocation of engine/decision/arbitration.py, over Spark DataFrames.

Input: one row per (subscriber, eligible contactable candidate, `arbitration.eligible`) with its position `k` in the
subscriber's preference order (0 = its best), channel, total cost and value density. Each round, as
`allocate_arrays` does it:

1. **Proposal.** Among the candidates of subscribers not yet served whose channel has capacity left and
   whose cost fits the budget left, each subscriber's first (lowest `k`): a group-by on the subscriber
   over data hash-partitioned by subscriber (no shuffle).
2. **Order.** The proposals sorted globally by value density descending, then subscriber_id ascending
   (`orderBy`: a range-partitioned sort; partition i holds the i-th slice of the global order).
3. **Capacity.** Per channel, a proposal's global running count is the count of that channel in the
   partitions before it (a small table of counts per partition and channel, collected to the driver)
   plus its count within its partition; it is admitted while that is below the channel's capacity left.
4. **Budget.** Over the admitted proposals, in the same order, the running total cost is admitted while
   it stays within the budget left. The running sum is carried from partition to partition in order (a
   one-partition job per slice, passing one float), so it is the same left-to-right floating-point sum
   numpy's cumsum computes - a sum of per-partition totals could round differently and flip the
   proposal that lands exactly on the budget. It stops at the first partition where the budget is
   crossed (the running sum only grows, so nothing after it is taken).
5. The chosen leave; capacities and the budget shrink by what they used (counts and one float come
   back to the driver). The loop runs while anyone proposes, at most MAX_ROUNDS times, like the local one.

Nothing but per-partition counts, one float per partition and the round's totals reach the driver.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from engine.data.schema import ID
from engine.decision.arbitration import MAX_ROUNDS


@dataclass
class SparkAllocation:
    chosen: object  # DataFrame (subscriber_id, _pick): the chosen candidate's position in the arrays
    budget_left: float  # inf when unlimited
    capacity_left: dict[str, int | None]
    rounds: int
    chosen_rows: int = 0  # how many subscribers were chosen (summed from the rounds' counts)


def _mark(step: str) -> None:
    from engine.spark.decide import _mark as mark

    mark(step)


def _part() -> int:
    from pyspark import TaskContext

    return TaskContext.get().partitionId()


def _channel_counts(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    part = _part()
    counts: dict[str, int] = {}
    rows = 0
    for b in batches:
        rows += b.num_rows
        for value in b.column("ch").value_counts().to_pylist():
            counts[value["values"]] = counts.get(value["values"], 0) + int(value["counts"])
    names = list(counts)
    yield pa.RecordBatch.from_arrays([pa.array([part] * len(names), pa.int32()), pa.array(names, pa.string()),
                                      pa.array([counts[n] for n in names], pa.int64())], names=["part", "ch", "n"])


def _admitted(chs: np.ndarray, offsets: Mapping[str, int], cap: Mapping[str, int | None]) -> np.ndarray:
    """Per row (in partition order): is its channel's global running count below the channel's capacity?"""
    out = np.ones(len(chs), dtype=bool)
    for ch in np.unique(chs):
        limit = cap.get(ch)
        if limit is None:
            continue
        at = np.flatnonzero(chs == ch)
        out[at] = offsets.get(ch, 0) + np.arange(len(at)) < limit
    return out


def _partition_rows(batches: Iterator[pa.RecordBatch]) -> pa.Table | None:
    held = [b for b in batches if b.num_rows]
    return pa.Table.from_batches(held) if held else None


def _running(costs: np.ndarray, admitted: np.ndarray, start: float) -> np.ndarray:
    """start + the left-to-right running sum of admitted costs (np.cumsum is sequential, as in numpy's
    allocate_arrays, so carrying `start` across partitions reproduces the single-array sum exactly)."""
    return np.cumsum(np.r_[start, np.where(admitted, costs, 0.0)])[1:]


def _chain(rows, *, offsets: Mapping[str, int], cap: Mapping[str, int | None], start: float, limit: float):
    """One partition of the budget walk: its running sum from `start`, the last value within `limit`,
    whether the limit was crossed here, and what was taken per channel."""
    data = list(rows)
    chs = np.array([r[0] for r in data], dtype=object)
    costs = np.array([r[1] for r in data], dtype=float)
    admitted = _admitted(chs, offsets, cap)
    run = _running(costs, admitted, start)
    ok = run <= limit
    taken = admitted & ok
    names, n = np.unique(chs[taken], return_counts=True) if taken.any() else ([], [])
    last = float(run[ok][-1]) if ok.any() else None
    return [(float(run[-1]) if len(run) else start, last, bool((~ok).any()),
             {str(c): int(k) for c, k in zip(names, n, strict=True)})]


def _take(batches, *, offsets, starts, limit: float, cap):
    """The chosen proposals of one partition of the round's order (what the driver walked)."""
    part = _part()
    table = _partition_rows(batches)
    if table is None or part not in offsets or (starts is not None and part not in starts):
        return
    chs = table.column("ch").to_numpy(zero_copy_only=False).astype(object)
    ok = _admitted(chs, offsets[part], cap)
    if starts is not None:
        ok &= _running(table.column("cost").to_numpy(), ok, starts[part]) <= limit
    idx = pa.array(np.flatnonzero(ok))
    yield pa.RecordBatch.from_arrays([table.column(ID).take(idx).combine_chunks(),
                                      table.column("k").take(idx).combine_chunks(),
                                      table.column("ch").take(idx).combine_chunks()], names=[ID, "k", "ch"])


def allocate(spark, candidates, *, channels: list[str], budget: float | None,
             capacity: Mapping[str, int | None], max_rounds: int = MAX_ROUNDS,
             partitions: int | None = None) -> SparkAllocation:
    """Allocate over `candidates` (columns subscriber_id, k, ch, cost, density); see the module docs."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    sc = spark.sparkContext
    n_parts = partitions or int(spark.conf.get("spark.sql.shuffle.partitions"))
    cap: dict[str, int | None] = {ch: (None if capacity.get(ch) is None else int(capacity[ch])) for ch in channels}
    budget_left = math.inf if budget is None else float(budget)
    remaining = candidates.repartition(n_parts, ID).persist(StorageLevel.MEMORY_AND_DISK)
    picks = []
    chosen_rows = 0
    held = [remaining]  # cached frames the lazily computed next `remaining` still needs
    rounds = 0
    while rounds < max_rounds:
        open_channels = [ch for ch in channels if cap[ch] is None or cap[ch] > 0]
        live = remaining.filter(F.col("ch").isin(open_channels))
        if budget_left != math.inf:
            live = live.filter(F.col("cost") <= F.lit(budget_left))
        proposals = (live.groupBy(ID).agg(F.min(F.struct("k", "ch", "cost", "density")).alias("s"))
                     .select(ID, "s.k", "s.ch", "s.cost", "s.density"))
        ordered = proposals.orderBy(F.col("density").desc(), F.col(ID).asc()).persist(StorageLevel.MEMORY_AND_DISK)
        counts = ordered.mapInArrow(_channel_counts, "part int, ch string, n long").collect()
        for frame in held[:-1]:  # `remaining` is materialised now: what it was computed from can go
            frame.unpersist()
        held = held[-1:]
        _mark("  proposals ordered + counted")
        if not counts:
            ordered.unpersist()
            break
        rounds += 1
        parts = sorted({r["part"] for r in counts})
        per_part: dict[int, dict[str, int]] = {p: {} for p in parts}
        for r in counts:
            per_part[r["part"]][r["ch"]] = int(r["n"])
        offsets: dict[int, dict[str, int]] = {}
        seen: dict[str, int] = {}
        for p in parts:
            offsets[p] = dict(seen)
            for ch, n in per_part[p].items():
                seen[ch] = seen.get(ch, 0) + n
        round_cap, round_budget = dict(cap), budget_left

        starts: dict[int, float] | None = None  # running budget sum before each partition taking part
        used: dict[str, int] = {}
        if budget_left == math.inf:
            used = {ch: (n if round_cap.get(ch) is None else min(n, int(round_cap[ch]))) for ch, n in seen.items()}
        else:
            starts = {}
            spent = 0.0
            running = 0.0
            packed = ordered.select("ch", "cost").rdd
            for p in parts:
                starts[p] = running
                end, last_taken, crossed, taken = sc.runJob(
                    packed, functools.partial(_chain, offsets=offsets[p], cap=round_cap, start=running,
                                              limit=round_budget), [p])[0]
                for ch, n in taken.items():
                    used[ch] = used.get(ch, 0) + n
                if last_taken is not None:
                    spent = last_taken
                running = end
                if crossed:
                    break
            budget_left -= spent
        _mark("  budget chain")
        take = functools.partial(_take, offsets=offsets, starts=starts, limit=round_budget, cap=round_cap)
        won = ordered.mapInArrow(take, f"{ID} string, k int, ch string").persist(StorageLevel.MEMORY_AND_DISK)
        for ch, n in used.items():
            if cap.get(ch) is not None:
                cap[ch] = int(cap[ch]) - n
        picks.append(won.select(ID, F.col("k").alias("_pick")))
        chosen_rows += sum(used.values())
        held.append(ordered)  # `won` stays cached: the picks are read from it at the end
        if sum(used.values()) == 0:  # cannot happen (the first proposal fits), but never loop on nothing
            break
        remaining = remaining.join(won.select(ID), ID, "left_anti").persist(StorageLevel.MEMORY_AND_DISK)
        held.append(remaining)
    remaining.unpersist()
    if picks:
        chosen = picks[0]
        for p in picks[1:]:
            chosen = chosen.unionByName(p)
    else:
        chosen = spark.createDataFrame([], f"{ID} string, _pick int")
    return SparkAllocation(chosen=chosen, budget_left=budget_left, capacity_left=cap, rounds=rounds,
                           chosen_rows=chosen_rows)
