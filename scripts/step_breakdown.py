"""Where one call of a network goes on the CPU: its matrix products (with the FLOP/s they ran at), the fused
selective-scan kernel (forward and backward), its convolutions, and the rest.

Times are the self times of ``torch.profiler`` events of one profiled call, grouped by :data:`PARTS`; the products'
FLOPs come from ``FlopCounterMode`` over another call (``bench_common``'s formulas, oneDNN's linear included). The
rest is the call's median time without the profiler (``total_s``) less the named parts, so the parts and the rest
add up to it. ``scripts/benchmark_unet.py`` prints this for the default network's eval and training cases: where the
products already run near the machine's best matmul rate and the scan kernel near its operation count, their sum
against BasicUNet's whole time bounds what any other change can give.
"""

from __future__ import annotations

from collections.abc import Callable

from bench_common import flop_mapping, median, time_runs
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

#: the matrix products' profiler event names (``namespace::op``)
PRODUCT_EVENTS = ("mkldnn::_linear_pointwise", "aten::mm", "aten::addmm", "aten::bmm")

#: part name -> the profiler event names (exact) or name fragments (a leading ``~``) it takes
PARTS: dict[str, tuple[str, ...]] = {
    "products": PRODUCT_EVENTS,
    "scan_forward": ("_CrossScan",),
    "scan_backward": ("_CrossScanBackward",),
    "convolutions": ("~conv",),
}

#: the same ops as ``FlopCounterMode`` names them (its keys are OpOverloadPackets, ``namespace.op``)
PRODUCT_OPS = tuple(name.split("::")[1] for name in PRODUCT_EVENTS)


def part_of(name: str) -> str | None:
    """The :data:`PARTS` key an event named ``name`` belongs to, or None (the rest).

    Args:
        name: a profiler event name.

    Returns:
        The part's key, or None.
    """
    for part, keys in PARTS.items():
        if any(name == k or (k.startswith("~") and k[1:] in name.lower()) for k in keys):
            return part
    return None


def product_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix products (:data:`PRODUCT_OPS`) that one call of ``fn`` runs, forward and backward.

    Args:
        fn: the call (an eval forward or a training step).

    Returns:
        The FLOP count.
    """
    with FlopCounterMode(display=False, custom_mapping=flop_mapping()) as counter:
        fn()
    per_op = counter.get_flop_counts().get("Global", {})
    return sum(int(v) for op, v in per_op.items() if str(op).split(".")[-1] in PRODUCT_OPS)


def breakdown(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Seconds of one call of ``fn`` in each of :data:`PARTS`, ``total_s`` (the median of ``repeats`` timed calls
    after one warm-up), ``rest`` (``total_s`` less the parts) and ``product_flops_per_s`` (the products' FLOPs over
    their time; 0 without products).

    Args:
        fn: the call (an eval forward or a training step).
        repeats: timed calls for ``total_s``.

    Returns:
        ``{part: seconds, ..., "total_s": seconds, "rest": seconds, "product_flops_per_s": FLOP/s}``.
    """
    total_s = median(time_runs(fn, repeats))
    flops = product_flops(fn)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    parts = dict.fromkeys(PARTS, 0.0)
    for event in prof.events():
        part = part_of(event.name)
        if part is not None:
            parts[part] += event.self_cpu_time_total / 1e6
    parts["rest"] = total_s - sum(parts.values())
    parts["total_s"] = total_s
    parts["product_flops_per_s"] = flops / parts["products"] if parts["products"] > 0 else 0.0
    return parts
