"""Our run against TorchXRayVision's pretrained models: ``compare_run`` -> ``ComparisonResult`` -> ``comparison.json``;
and finished runs against each other: ``cxrutils.compare.runs.compare_runs`` -> ``runs/comparisons/<name>/``.

    cxrutils compare --run runs/demo --model densenet121-res224-nih
    cxrutils compare-runs runs/demo runs/demo_seed1

The names below load ``cxrutils.compare.run`` (and torch) when first used, so that reading a comparison of
runs (``cxrutils.compare.runs``, which the reports runner imports) needs no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxrutils.compare.run import ComparisonResult, compare_run, write_comparison

__all__ = ["ComparisonResult", "compare_run", "write_comparison"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cxrutils.compare import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
