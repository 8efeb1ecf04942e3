"""Evaluation of a trained run: ``evaluate_run`` -> ``EvaluationResult`` -> ``metrics.json``.

    cxrutils evaluate --run runs/demo
"""

from cxrutils.evaluate.evaluation import EvaluationResult, evaluate_run, write_metrics

__all__ = ["EvaluationResult", "evaluate_run", "write_metrics"]
