"""A trained run used on new films, and handed on: inference and the ONNX export.

    python -m cxrutils.infer --run runs/demo data/demo/images      # films -> inference.csv/.json, overlays, HTML
    python -m cxrutils.export --run runs/demo --format onnx         # runs/demo/model.onnx, verified

Layer: above ``evaluate`` (it uses Grad-CAM), below ``report`` (which draws its results).
"""

from cxrutils.inference.scoring import InferenceResult, ScoredFilm, infer_films, load_inference_model, write_results

__all__ = ["InferenceResult", "ScoredFilm", "infer_films", "load_inference_model", "write_results"]
