"""A trained run used on new films, and handed on: inference and the ONNX export.

    cxrutils infer --run runs/demo data/demo/images      # films -> inference.csv/.json, overlays, HTML
    cxrutils export --run runs/demo --format onnx         # runs/demo/model.onnx, verified

Layer: beside ``evaluate`` (both use the engine's Grad-CAM), below ``show`` and ``publish`` (which draw its results).
"""

from cxrutils.inference.scoring import InferenceResult, ScoredFilm, infer_films, load_inference_model, write_results

__all__ = ["InferenceResult", "ScoredFilm", "infer_films", "load_inference_model", "write_results"]
