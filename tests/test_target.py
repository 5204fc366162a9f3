"""A study's target hardware: how it is written, what each trial asks Ray for, and the refusal
of a cluster that lacks it (nas/config/study.py, nas/engine/tune.py). The real-cluster path is in
tests/test_study_ray.py."""
from __future__ import annotations

import pytest

from nas.config import ResourcesConfig
from nas.engine.tune import check_target, target_resource, trial_resources


@pytest.mark.parametrize("target, resource", [
    ("local", None), ("accelerator:H100", "accelerator_type:H100"), ("accelerator:A100-80G", "accelerator_type:A100-80G"),
    ("resource:bench_node", "bench_node")])
def test_targets_name_a_ray_resource(target, resource):
    assert target_resource(ResourcesConfig(target=target).target) == resource


@pytest.mark.parametrize("target", ["H100", "gpu:H100", "accelerator:", "resource:", "local:", "accelerator:H 100"])
def test_a_malformed_target_says_what_to_write(target):
    with pytest.raises(ValueError, match="accelerator:<type>"):
        ResourcesConfig(target=target)


def test_trials_ask_for_a_sliver_of_the_target():
    assert trial_resources(ResourcesConfig(cpus_per_trial=2)) == {"cpu": 2, "gpu": 0}
    r = trial_resources(ResourcesConfig(gpus_per_trial=0.5, target="accelerator:H100"))
    assert r == {"cpu": 1, "gpu": 0.5, "accelerator_type:H100": 0.001}


def test_a_cluster_without_the_target_is_refused():
    cluster = {"CPU": 16.0, "GPU": 1.0, "memory": 1e10, "object_store_memory": 1e9, "node:127.0.0.1": 1.0,
               "accelerator_type:A100": 1.0, "bench": 1.0}
    check_target("local", cluster)
    check_target("accelerator:A100", cluster)
    check_target("resource:bench", cluster)
    with pytest.raises(ValueError, match=r"'accelerator_type:H100'.*accelerator_type:A100, bench.*local"):
        check_target("accelerator:H100", cluster)
    with pytest.raises(ValueError, match=r"ray start --resources='\{\"other\": 1\}'"):
        check_target("resource:other", cluster)
