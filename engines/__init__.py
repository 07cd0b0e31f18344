"""Inference engines: one :class:`engines.api.Backend` interface over TensorRT, ONNX Runtime and Triton.

Modules: ``api`` (interface, ModelInfo, BackendChoice), ``config`` (EngineConfig), ``select``
(auto-selection), ``ort_backend``, ``trt_build`` / ``trt_runtime`` / ``cache`` (TensorRT engines),
``opcheck`` (TensorRT ONNX operator support), ``fp16``, ``triton``, ``bench``, ``trt_export``.
Never imports torch; tensorrt, pycuda and tritonclient are imported only when used. See docs/engines.md.
"""
