"""ONNX Runtime execution providers: preference names -> ORT names, availability and strict checks.

Preferences are short names (``tensorrt``, ``cuda``, ``cpu``, any case) or full ORT names
(``CUDAExecutionProvider``, ... as listed by ``onnxruntime.get_all_providers()``), best first.
Providers this onnxruntime build does not offer are skipped with a warning; ONNX Runtime always
keeps the CPU provider as the last fallback. ``strict=True`` fails when the first choice is not
available, or not among the providers the built session reports as active
(``session.get_providers()``; onnxruntime-gpu lists CUDA as available even where it cannot run).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import onnxruntime as ort

from prune_perception.errors import ProviderError

log = logging.getLogger(__name__)

PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
CPU_PROVIDER = PROVIDER_ALIASES["cpu"]


def provider_name(preference: str) -> str:
    """One preference (alias or full ORT name, any case) -> ORT provider name; ProviderError if unknown."""
    known = {name.lower(): name for name in ort.get_all_providers()}
    key = str(preference).strip().lower()
    if key in PROVIDER_ALIASES:
        return PROVIDER_ALIASES[key]
    if key in known:
        return known[key]
    raise ProviderError(f"unknown execution provider {preference!r}; known: {', '.join(PROVIDER_ALIASES)} "
                        f"or a full ONNX Runtime name ({', '.join(ort.get_all_providers())})")


def select_providers(preferences: Sequence[str], strict: bool) -> list[str]:
    """ORT names to build a session with: the preferred ones this build offers, in order, duplicates dropped."""
    if isinstance(preferences, str) or not preferences:
        raise ProviderError(f"providers must be a non-empty list of names, got {preferences!r}")
    requested = list(dict.fromkeys(provider_name(p) for p in preferences))
    available = ort.get_available_providers()
    if strict and requested[0] not in available:
        raise ProviderError(f"strict provider: first choice {requested[0]} is not available in this onnxruntime "
                            f"build (requested {requested}; available {available})")
    selected = [name for name in requested if name in available]
    skipped = [name for name in requested if name not in available]
    if skipped:
        log.warning("execution providers %s not available in this onnxruntime build (available %s); using %s",
                    skipped, available, selected or [CPU_PROVIDER])
    return selected or [CPU_PROVIDER]


def create_session(model_path: str, preferences: Sequence[str], strict: bool,
                   options: ort.SessionOptions) -> ort.InferenceSession:
    """Build the session with the preferred available providers and check the first choice is active.

    ONNX Runtime's own load errors (bad file, bad graph) propagate unchanged.
    """
    selected = select_providers(preferences, strict)
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=selected)
    active = session.get_providers()
    if selected[0] not in active:
        message = f"first choice {selected[0]} is not active; active providers: {active}"
        if strict:
            raise ProviderError(f"strict provider: {message}")
        log.warning("%s", message)
    return session
