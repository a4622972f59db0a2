"""Static schedule: split jobs over workers up front, balanced by estimated cost."""
from __future__ import annotations

from typing import List, Sequence


def partition(costs: Sequence[float], workers: int) -> List[List[int]]:
    """Indices of `costs` split into `workers` lists by longest-processing-time-first.

    Each job goes, largest first, to the worker with the least predicted load; each list is
    then in job order. Deterministic: ties go to the lower worker and the earlier job.
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")
    lists: List[List[int]] = [[] for _ in range(workers)]
    loads = [0.0] * workers
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        w = min(range(workers), key=lambda w: (loads[w], w))
        lists[w].append(i)
        loads[w] += costs[i]
    return [sorted(lst) for lst in lists]


def imbalance(loads: Sequence[float]) -> float:
    """max / mean - 1: 0 for a perfect balance."""
    busy = [x for x in loads]
    mean = sum(busy) / len(busy) if busy else 0.0
    return max(busy) / mean - 1.0 if mean > 0 else 0.0
