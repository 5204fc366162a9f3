"""The README's examples are real: its study file and its spec load as written."""
import re
from pathlib import Path

from nas.config import load_config
from search_spaces.spec import ArchSpec

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def _block(lang: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)
    assert blocks, f"README has no {lang} example"
    return blocks[0]


def test_readme_study_file_is_valid(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(_block("toml"))
    config = load_config(path)
    assert config.space.name == "full" and config.sampler.name == "nsga2"
    assert config.constraints["max_params"] == 400_000


def test_readme_spec_is_valid():
    spec = ArchSpec.from_json(_block("json"))
    assert [layer.proj for layer in spec.layers] == ["qkv", "q_kv"]
