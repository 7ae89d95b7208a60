"""Mixture keys and mixture specs: parsing, matching, resolution and every spec error."""

from __future__ import annotations

import numpy as np
import pytest

from mixtera_core.mixture import (
    DynamicMixture,
    HierarchicalMixture,
    InferringMixture,
    Mixture,
    MixtureError,
    MixtureKey,
    ScheduleMixture,
    StaticMixture,
)

COMPS = [
    MixtureKey.of_component({"language": "c", "license": "mit"}),
    MixtureKey.of_component({"language": "en", "license": "psf"}),
    MixtureKey.of_component({"language": "python", "license": "mit"}),
    MixtureKey.of_component({"language": "python", "license": "psf"}),
]
SIZES = np.array([10, 40, 30, 20])


def test_key_parsing_and_canonical_form():
    k = MixtureKey.parse("license=mit;language=python, c")
    assert str(k) == "language=c,python;license=mit"
    assert MixtureKey.parse({"language": ["python", "c"], "license": "mit"}) == k
    assert k.properties == ["language", "license"]


@pytest.mark.parametrize("bad", ["", "language", "language=", "=python", "language=a,,b", "1x=a"])
def test_bad_keys(bad):
    with pytest.raises(MixtureError):
        MixtureKey.parse(bad)


def test_matching_is_symmetric_and_lists_match_any_element():
    a, b = MixtureKey.parse("language=python,c"), MixtureKey.parse("language=c;license=mit")
    assert a.matches(b) and b.matches(a)
    c = MixtureKey.parse("language=en")
    assert not a.matches(c) and not c.matches(a)
    multi = MixtureKey.of_component({"language": ["de", "en"]})
    assert c.matches(multi) and multi.matches(c)
    assert not MixtureKey.of_component({"language": None}).matches(c)


def test_static_resolution_splits_a_key_by_component_size():
    r = StaticMixture({"language=python": 0.5, "language=c,en": 0.5}).resolve(COMPS, SIZES)
    assert r.component_key.tolist() == [1, 1, 0, 0]
    assert np.allclose(r.weights, [0.1, 0.4, 0.3, 0.2])
    assert np.isclose(r.weights.sum(), 1)


def test_zero_weights_and_unmatched_components():
    r = StaticMixture({"language=python": 1.0, "language=c": 0.0}).resolve(COMPS, SIZES)
    assert r.weights.tolist() == [0.0, 0.0, 0.6, 0.4]
    assert r.unmatched_components == [1]


def test_spec_errors():
    with pytest.raises(MixtureError, match="sum to 1, they sum to 0.9"):
        StaticMixture({"language=python": 0.6, "language=c": 0.3})
    with pytest.raises(MixtureError, match="finite number >= 0"):
        StaticMixture({"language=python": 1.2, "language=c": -0.2})
    with pytest.raises(MixtureError, match="matches two keys"):
        StaticMixture({"language=python": 0.5, "license=mit": 0.5}).resolve(COMPS, SIZES)
    with pytest.raises(MixtureError, match="key language=rust matches no samples"):
        StaticMixture({"language=python": 0.5, "language=rust": 0.5}).resolve(COMPS, SIZES)
    with pytest.raises(MixtureError, match="given twice"):
        StaticMixture({"language=python,c": 0.5, "language=c,python": 0.5})
    with pytest.raises(MixtureError, match="at least one key"):
        StaticMixture({})
    with pytest.raises(MixtureError, match="start at step 0"):
        ScheduleMixture([(5, {"language=python": 1.0})])
    with pytest.raises(MixtureError, match="increase strictly"):
        ScheduleMixture([(0, {"language=python": 1.0}), (0, {"language=c": 1.0})])
    with pytest.raises(MixtureError, match="same properties"):
        ScheduleMixture([(0, {"language=python": 1.0}), (10, {"license=mit": 1.0})])
    with pytest.raises(MixtureError, match="level under license=mit"):
        HierarchicalMixture({"license=mit": (0.5, {"language=python": 0.7}), "license=psf": 0.5})
    with pytest.raises(MixtureError, match="exclude each other"):
        HierarchicalMixture({"language=c": (1.0, {"language=python": 1.0})})


def test_hierarchical_flattens_to_products():
    h = HierarchicalMixture(
        {"license=mit": (0.6, {"language=python": 0.5, "language=c": 0.5}), "license=psf": 0.4}
    )
    assert dict(zip(map(str, h.keys), h.key_weights, strict=True)) == {
        "language=python;license=mit": 0.3,
        "language=c;license=mit": 0.3,
        "license=psf": 0.4,
    }
    r = h.resolve(COMPS, SIZES)
    assert np.allclose(r.weights, [0.3, 0.4 * 40 / 60, 0.3, 0.4 * 20 / 60])


def test_inferring_and_schedule():
    r = InferringMixture().resolve(COMPS, SIZES)
    assert np.allclose(r.weights, SIZES / SIZES.sum()) and len(r.keys) == 4
    s = ScheduleMixture(
        [(0, {"language=python": 1.0}), (100, {"language=python": 0.5, "language=c,en": 0.5})]
    )
    assert s.resolve(COMPS, SIZES, step=99).weights[:2].sum() == 0
    assert np.isclose(s.resolve(COMPS, SIZES, step=100).weights[:2].sum(), 0.5)
    assert s.switch_steps() == [100]


@pytest.mark.parametrize(
    "mixture",
    [
        StaticMixture({"language=python": 0.25, "language=c,en": 0.75}),
        InferringMixture(["language"]),
        HierarchicalMixture({"license=mit": (0.6, {"language=python": 1.0}), "license=psf": 0.4}),
        ScheduleMixture([(0, {"language=python": 1.0}), (7, {"language=c": 1.0})]),
        DynamicMixture({"language=python": 0.5, "language=c": 0.5}, "loss_weighted", ema=0.5),
    ],
)
def test_json_round_trip(mixture):
    assert Mixture.from_json(mixture.to_json()).to_json() == mixture.to_json()


def test_mixture_log_lookups_seal_and_compaction():
    from mixtera_core.mixture_log import WeightsLog

    log = WeightsLog([(0, np.array([0.5, 0.5]))], sealed=4)
    for chunk, w in ((4, [0.6, 0.4]), (9, [0.6004, 0.3996]), (12, [0.9, 0.1]), (12, [0.8, 0.2])):
        log.add(chunk, np.array(w))
    assert [i for i, _ in log.entries] == [0, 4, 9, 12]  # a second change at 12 replaces the first
    assert log.at(3).tolist() == [0.5, 0.5] and log.at(11).tolist() == [0.6004, 0.3996]
    assert log.at(10**9).tolist() == [0.8, 0.2]
    with pytest.raises(ValueError, match="before the last one"):
        log.add(5, np.array([1.0, 0.0]))
    assert log.compact(5) == 1  # chunks >= 5 keep their weights
    assert [i for i, _ in log.entries] == [0, 9, 12] and log.at(7).tolist() == [0.6, 0.4]
    assert log.at(9).tolist() == [0.6004, 0.3996] and log.at(0).tolist() == [0.6, 0.4]
    assert log.compact(3) == 0
