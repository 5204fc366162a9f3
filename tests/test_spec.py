import json

import pytest

from search_spaces.spec import ArchSpec, LayerSpec, uniform
from search_spaces.variants import variant

ISSUE_EXAMPLE = {
    "vocab_size": 256, "context": 256, "d_model": 128, "n_heads": 4, "ffn_dim": 512,
    "pos": "rope", "bias": False, "tie_embeddings": True, "activation": "gelu",
    "layers": [{"proj": "qkv", "n_kv_heads": 4}, {"proj": "q_kv", "n_kv_heads": 1}],
}


def test_issue_example_round_trips_and_hash_is_stable():
    spec = ArchSpec.from_dict(ISSUE_EXAMPLE)
    again = ArchSpec.from_json(spec.to_json())
    assert again == spec and again.hash == spec.hash
    assert spec.layers[1].proj == "q_kv" and spec.layers[1].n_kv_heads == 1
    # n_kv_heads omitted means MHA: the same design, so the same hash
    implicit = dict(ISSUE_EXAMPLE, layers=[{"proj": "qkv"}, {"proj": "q_kv", "n_kv_heads": 1}])
    assert ArchSpec.from_dict(implicit).hash == spec.hash
    assert ArchSpec.from_dict(dict(ISSUE_EXAMPLE, d_model=256)).hash != spec.hash


def test_hash_is_independent_of_key_order():
    shuffled = json.loads(json.dumps(ISSUE_EXAMPLE))
    shuffled = dict(reversed(list(shuffled.items())))
    assert ArchSpec.from_dict(shuffled).hash == ArchSpec.from_dict(ISSUE_EXAMPLE).hash


@pytest.mark.parametrize(
    "change, message",
    [
        ({"n_heads": 3}, "n_heads=3 must divide d_model=128"),
        ({"layers": [{"n_kv_heads": 3}]}, "n_kv_heads=3 must divide n_heads=4; use one of [1, 2, 4]"),
        ({"layers": [{"kv_from": 0}]}, "must point to an earlier layer"),
        ({"layers": [{}, {"kv_from": 1}]}, "must point to an earlier layer"),
        ({"layers": [{"n_kv_heads": 2}, {"kv_from": 0}]}, "must match layer 0's n_kv_heads=2"),
        ({"layers": [{"attn": "none"}, {"kv_from": 0}]}, "makes no K/V"),
        ({"layers": [{"proj": "qkv", "asym_pos": True}]}, "use it with proj 'qk_v' or 'qkv_single'"),
        ({"layers": [{"qk_rank": 128}]}, "qk_rank=128 is out of range; use 1..127"),
        ({"layers": [{"proj": "q_kv", "v_rank": 8}]}, "v_rank does not apply"),
        ({"layers": [{"proj": "qk_v", "kv_latent": 8}]}, "kv_latent needs separate queries"),
        ({"layers": [{"attn": "mixer", "window": 8}]}, "window do not apply"),
        ({"layers": [{"window": 0}]}, "window=0 must be at least 1"),
        ({"layers": [{"window": 8}], "causal": False}, "window is for causal models"),
        ({"layers": [{"proj": "qvk"}]}, "proj='qvk' is not known"),
        ({"layers": [{"heads": 4}]}, "unknown key(s) ['heads']"),
        ({"layers": []}, "layers is empty"),
        ({"pos": "alibi"}, "pos='alibi' is not known; use one of ['rope', 'learned', 'none']"),
        ({"d_model": 120, "n_heads": 40}, "even head dimension"),
        ({"dmodel": 64}, "unknown key(s) ['dmodel']"),
        ({"context": 0}, "context=0 must be a positive integer"),
    ],
)
def test_invalid_specs_name_the_field_and_the_fix(change, message):
    with pytest.raises(ValueError) as err:
        ArchSpec.from_dict(dict(ISSUE_EXAMPLE, **change))
    assert message in str(err.value)


def test_load_missing_file_says_so(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ArchSpec.load(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ArchSpec.load(str(bad))


def test_variants_apply_the_named_design():
    base = ArchSpec(n_heads=16, d_model=256, layers=uniform(4))
    spec = variant("q_kv+gqa4", base=base)
    assert all(layer.proj == "q_kv" and layer.n_kv_heads == 4 for layer in spec.layers)
    cla = variant("qkv+cla2", base=base)
    assert [layer.kv_from for layer in cla.layers] == [None, 0, None, 2]
    assert variant("qkv+noattn2", base=base).layers[1].attn == "none"
    assert variant("mixer", base=base).layers[0].attn == "mixer"
    with pytest.raises(ValueError, match="unknown modifier 'gqa'"):
        variant("qkv+gqa", base=base)
    with pytest.raises(ValueError, match="n_kv_heads=3 must divide"):
        variant("qkv+gqa3", base=base)
    assert LayerSpec().has_attention
