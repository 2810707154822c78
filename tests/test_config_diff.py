"""config_diff / describe_diff: what a resumed run compares with the configuration it was started with."""

from kka_ray.config import config_diff, describe_diff

SAVED = {"name": "a", "seed": 0, "ray": {"num_cpus": 2}, "update": {"iterations": 2, "mode": "rep"},
         "prefer": {"steps": 16, "target_modules": ["q_proj"]}, "old": 1}
CURRENT = {"name": "a", "seed": 0, "ray": {"num_cpus": 4}, "update": {"iterations": 3, "mode": "rep"},
           "prefer": {"steps": 16, "target_modules": ["q_proj", "v_proj"]}, "new": {"deep": None}}


def test_nested_keys_one_sided_keys_and_ignored_prefixes():
    assert config_diff(SAVED, SAVED) == []
    assert config_diff(SAVED, CURRENT) == ["old", "ray.num_cpus", "update.iterations", "prefer.target_modules",
                                           "new.deep"]
    # a prefix leaves out every key under it; update.mode stays compared
    assert config_diff(SAVED, CURRENT, ignore=("ray.", "update.iterations")) == ["old", "prefer.target_modules",
                                                                                 "new.deep"]


def test_describe_names_both_values_and_caps_the_list():
    keys = config_diff(SAVED, CURRENT)
    assert describe_diff(SAVED, CURRENT, keys[:2]) == "old: 1 -> (absent); ray.num_cpus: 2 -> 4"
    assert describe_diff(SAVED, CURRENT, keys, limit=1) == "old: 1 -> (absent); ... and 4 more"
