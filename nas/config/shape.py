"""The base model shape of a config file: the model that named designs are applied to.

A ladder's ``[base]`` is a ``ModelShape``; a probe suite's ``[model]`` is a ``ModelStyle`` (the
settings that are not sizes) whose widths, depths and heads come from its grid. Both become an
``ArchSpec`` through ``search_spaces.BaseDims``, the shape a study's search space is placed in,
so there is one conversion from a shape to a spec. ``search_spaces`` knows nothing of pydantic:
this is the validated front of it, with the defaults of a small CPU model.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from nas.config.base import Section
from search_spaces.base import BaseDims
from search_spaces.spec import ArchSpec, uniform


class ModelStyle(Section):
    """How every block is built, whatever its size."""

    pos: Literal["rope", "learned", "none"] = "rope"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    activation: Literal["gelu", "relu2", "swiglu"] = "gelu"
    bias: bool = False
    tie_embeddings: bool = True
    # Left out of a stored config at their defaults, so configs written before them keep their digest.
    init: Annotated[Literal["gpt2", "torch_default"],
                    Field(exclude_if=lambda v: v == "gpt2")] = "gpt2"  # gpt2: N(0, 0.02); torch_default: PyTorch's
    head_bias: Annotated[bool, Field(exclude_if=lambda v: v is False)] = False  # a bias on the output logits


class ModelShape(ModelStyle):
    """The model the named variants are applied to (a ladder's sizes then rescale it)."""

    vocab_size: int = Field(default=256, ge=1)
    context: int = Field(default=64, ge=1)
    d_model: int = Field(default=32, ge=1)
    n_heads: int = Field(default=4, ge=1)
    ffn_dim: int = Field(default=128, ge=1)
    n_layers: int = Field(default=1, ge=1)

    def spec(self) -> ArchSpec:
        """This shape with plain attention in every layer."""
        return BaseDims(**self.model_dump()).spec(list(uniform(self.n_layers)))
