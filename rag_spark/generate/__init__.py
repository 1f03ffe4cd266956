"""Answer generation: model resolution, prompts, the Generator protocol, the vLLM backend and the Ray stage.

Heavy imports (torch, transformers, vLLM) happen inside the functions that need them, so importing this package
is cheap and works without vLLM installed.
"""

from rag_spark.generate.base import Generation, Generator
from rag_spark.generate.models import ResolvedModel, prepare_models, resolve_model
from rag_spark.generate.prompts import PromptBuild, build_prompt, parse_citations

__all__ = [
    "Generation",
    "Generator",
    "PromptBuild",
    "ResolvedModel",
    "build_prompt",
    "parse_citations",
    "prepare_models",
    "resolve_model",
]
