"""Our run against TorchXRayVision's pretrained models: ``compare_run`` -> ``ComparisonResult`` -> ``comparison.json``.

    cxrutils compare --run runs/demo --model densenet121-res224-nih
"""

from cxrutils.compare.run import ComparisonResult, compare_run, write_comparison

__all__ = ["ComparisonResult", "compare_run", "write_comparison"]
