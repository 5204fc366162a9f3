"""The one config layer: every file qkvnas reads (a study, a ladder, a probe suite) is a tree of
``Section`` models validated by ``validate``, read by one loader with ``--set`` overrides, and
found among the presets by its ``kind`` field.

    base.py     Section, validate(Model, raw, source), one-line error messages
    loader.py   TOML file or preset by kind, --set key.path=value overrides
    shape.py    the base model shape of ladders and probe suites (-> ArchSpec)
    study.py    StudyConfig and its sections

The optimiser settings every budget embeds are ``nas.train.Optimizer`` (re-exported here).
"""
from __future__ import annotations

from nas.config.base import Section, format_errors, known_keys, validate
from nas.config.loader import (
    KIND_NOUNS, PRESET_DIR, Kind, apply_override, config_path, load_raw, parse_value, preset_kind, presets, read_toml,
)
from nas.config.shape import ModelShape, ModelStyle
from nas.config.study import (
    SAMPLERS, FidelityConfig, ProbeConfig, RayConfig, ResourcesConfig, SamplerConfig, SpaceConfig, StudyConfig,
    constraint_objective, load_config,
)
from nas.train import Optimizer

__all__ = [
    "KIND_NOUNS", "PRESET_DIR", "SAMPLERS", "FidelityConfig", "Kind", "ModelShape", "ModelStyle", "Optimizer", "ProbeConfig",
    "RayConfig", "ResourcesConfig", "SamplerConfig", "Section", "SpaceConfig", "StudyConfig", "apply_override",
    "config_path", "constraint_objective", "format_errors", "known_keys", "load_config", "load_raw", "parse_value",
    "preset_kind", "presets", "read_toml", "validate",
]
