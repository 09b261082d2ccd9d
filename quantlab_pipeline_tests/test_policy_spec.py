"""Policy specs: the five kinds, canonical form, stable ids, one-line errors naming the field."""

from __future__ import annotations

import json

import pytest

from quantlab_pipeline.core.errors import SpecError
from quantlab_pipeline.core.policy_spec import (
    Combo,
    FixedStop,
    Ladder,
    LadderLevel,
    TimeStop,
    TrailingStop,
    leaves,
    parse_policy,
    policy_id_of,
    policy_to_dict,
)
from quantlab_pipeline.storage.run_creation import load_json_arg


def test_seed_example_parses():
    policy = parse_policy('{"kind":"fixed_stop","stop_loss_bps":500}')
    assert policy == FixedStop(stop_loss_bps=500)
    assert policy_to_dict(policy) == {"kind": "fixed_stop", "stop_loss_bps": 500}


def test_every_kind_parses_from_text_file_and_dict(tmp_path):
    spec = {
        "kind": "combo",
        "policies": [
            {"kind": "trailing_stop", "activation_bps": 0, "trail_bps": 1500, "hard_stop_bps": 3000},
            {"kind": "time_stop", "max_hold": "4h", "take_profit_bps": 10000, "stop_loss_bps": 500},
            {"kind": "ladder", "levels": [{"multiple": 4, "fraction": 0.25}, {"multiple": 2, "fraction": 0.5}]},
            {"kind": "fixed_stop", "stop_loss_bps": 500, "take_profit_bps": None},
        ],
    }
    expected = Combo(
        (
            TrailingStop(0, 1500, 3000),
            TimeStop(4 * 3_600_000, 10000, 500),
            Ladder((LadderLevel(2, 0.5), LadderLevel(4, 0.25))),  # sorted ascending
            FixedStop(500),  # null optional = absent
        )
    )
    path = tmp_path / "p.json"
    path.write_text(json.dumps(spec))
    assert parse_policy(spec) == expected
    assert parse_policy(json.dumps(spec)) == expected
    assert parse_policy(load_json_arg(f"@{path}", field="policy")) == expected


def test_canonical_form_round_trips_and_ids_are_stable():
    a = parse_policy({"kind": "time_stop", "max_hold": "240m", "stop_loss_bps": 500.0})
    b = parse_policy({"stop_loss_bps": 500, "max_hold": 14_400_000, "kind": "time_stop"})
    assert policy_to_dict(a) == {"kind": "time_stop", "max_hold": "4h", "stop_loss_bps": 500}
    assert policy_id_of(a) == policy_id_of(b)
    assert len(policy_id_of(a)) == 12 and all(ch in "0123456789abcdef" for ch in policy_id_of(a))
    assert policy_id_of(a) != policy_id_of(parse_policy({"kind": "time_stop", "max_hold": "4h", "stop_loss_bps": 501}))
    ladder = parse_policy(
        {"kind": "ladder", "levels": [{"multiple": 3, "fraction": 0.5}, {"multiple": 1.5, "fraction": 0.5}]}
    )
    assert policy_to_dict(ladder)["levels"] == [{"multiple": 1.5, "fraction": 0.5}, {"multiple": 3, "fraction": 0.5}]
    for policy in (a, ladder, parse_policy({"kind": "time_stop", "max_hold": 90_500})):
        assert parse_policy(policy_to_dict(policy)) == policy
    assert policy_to_dict(parse_policy({"kind": "time_stop", "max_hold": 90_500}))["max_hold"] == "90500ms"


def test_combo_leaves_are_depth_first():
    policy = parse_policy(
        {
            "kind": "combo",
            "policies": [
                {
                    "kind": "combo",
                    "policies": [
                        {"kind": "fixed_stop", "stop_loss_bps": 1},
                        {"kind": "fixed_stop", "stop_loss_bps": 2},
                    ],
                },
                {"kind": "fixed_stop", "stop_loss_bps": 3},
            ],
        }
    )
    assert [leaf.stop_loss_bps for leaf in leaves(policy)] == [1, 2, 3]


def test_ladder_fractions_summing_to_one_in_decimals_are_accepted():
    # 0.1 + 0.2 + 0.7 = 1.0000000000000002 in binary floating point
    levels = [{"multiple": 2, "fraction": 0.1}, {"multiple": 3, "fraction": 0.2}, {"multiple": 4, "fraction": 0.7}]
    assert len(parse_policy({"kind": "ladder", "levels": levels}).levels) == 3


FIXED = '{"kind":"fixed_stop","stop_loss_bps":500}'


@pytest.mark.parametrize(
    "value, message",
    [
        (
            {
                "kind": "combo",
                "policies": [json.loads(FIXED), {"kind": "trailing_stop", "activation_bps": 0, "trail_bps": 10000}],
            },
            "policy.policies[1].trail_bps: must be < 10000 (a 100 % trail), got 10000",
        ),
        (
            '{"kind":"stop"}',
            'policy.kind: unknown kind "stop" (expected one of fixed_stop, trailing_stop, time_stop, ladder, combo)',
        ),
        ('{"stop_loss_bps":500}', "policy.kind: missing"),
        ('{"kind":"fixed_stop","stop_loss_pct":5}', "policy.stop_loss_pct: unknown key for kind 'fixed_stop'"),
        ('{"kind":"fixed_stop"}', "policy.stop_loss_bps: missing (required for kind 'fixed_stop')"),
        ('{"kind":"fixed_stop","stop_loss_bps":-5}', "policy.stop_loss_bps: must be > 0, got -5"),
        ('{"kind":"fixed_stop","stop_loss_bps":0}', "policy.stop_loss_bps: must be > 0, got 0"),
        ('{"kind":"fixed_stop","stop_loss_bps":10000}', "policy.stop_loss_bps: must be < 10000"),
        ('{"kind":"fixed_stop","stop_loss_bps":500,"take_profit_bps":0}', "policy.take_profit_bps: must be > 0"),
        ('{"kind":"fixed_stop","stop_loss_bps":"500"}', 'policy.stop_loss_bps: expected a number, got "500"'),
        ('{"kind":"fixed_stop","stop_loss_bps":true}', "policy.stop_loss_bps: expected a number, got true"),
        ('{"kind":"trailing_stop","activation_bps":-1,"trail_bps":100}', "policy.activation_bps: must be >= 0"),
        (
            '{"kind":"trailing_stop","activation_bps":0,"trail_bps":100,"hard_stop_bps":12000}',
            "policy.hard_stop_bps: must be < 10000",
        ),
        ('{"kind":"time_stop","max_hold":"0m"}', "policy.max_hold: must be a positive duration"),
        ('{"kind":"time_stop","max_hold":"4 hours"}', "policy.max_hold: expected a duration like"),
        (
            '{"kind":"ladder","levels":[{"multiple":2,"fraction":0.7},{"multiple":3,"fraction":0.5}]}',
            "policy.levels: fractions sum to 1.2, must be <= 1",
        ),
        ('{"kind":"ladder","levels":[{"multiple":2,"fraction":0}]}', "policy.levels[0].fraction: must be > 0"),
        (
            '{"kind":"ladder","levels":[{"multiple":2,"fraction":0.5},{"multiple":1,"fraction":0.5}]}',
            "policy.levels[1].multiple: must be > 1",
        ),
        (
            '{"kind":"ladder","levels":[{"multiple":2,"fraction":0.5},{"multiple":2,"fraction":0.5}]}',
            "policy.levels[1].multiple: duplicate level 2",
        ),
        (
            '{"kind":"ladder","levels":[{"multiple":2,"share":0.5}]}',
            "policy.levels[0].share: unknown key for a ladder level",
        ),
        ('{"kind":"ladder","levels":[]}', "policy.levels: expected a non-empty list"),
        ('{"kind":"combo","policies":[]}', "policy.policies: expected a non-empty list of policies"),
        (
            {"kind": "combo", "policies": [{"kind": "combo", "policies": [json.loads(FIXED), {"kind": "x"}]}]},
            'policy.policies[0].policies[1].kind: unknown kind "x"',
        ),
        ('{"kind":"fixed_stop",', "policy: invalid JSON at line 1 column 22: Expecting property name"),
        ("[1, 2]", "policy: expected a policy object"),
    ],
)
def test_validation_errors_name_the_field(value, message):
    with pytest.raises(SpecError) as info:
        parse_policy(value)
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_policy_files_name_the_file_when_missing_or_invalid(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{nope")
    with pytest.raises(SpecError, match=r"^policy: invalid JSON in '.*bad\.json' at line 1 column 2"):
        load_json_arg(f"@{path}", field="policy")
    with pytest.raises(SpecError, match=r"^policy: cannot read '/nonexistent/policy\.json'"):
        load_json_arg("@/nonexistent/policy.json", field="policy")


def test_policy_size_is_bounded():
    nested: dict = {"kind": "fixed_stop", "stop_loss_bps": 500}
    for _ in range(200):
        nested = {"kind": "combo", "policies": [nested]}
    with pytest.raises(SpecError, match="combos nest at most 8 deep"):
        parse_policy(nested)
    levels = [{"multiple": 1 + (i + 1) / 1000, "fraction": 1e-6} for i in range(100_000)]
    with pytest.raises(SpecError, match=r"^policy\.levels: a ladder has at most 64 levels, got 100000"):
        parse_policy({"kind": "ladder", "levels": levels})
    wide = {"kind": "combo", "policies": [{"kind": "fixed_stop", "stop_loss_bps": 100 + i} for i in range(65)]}
    with pytest.raises(SpecError, match="at most 64 exit rules"):
        parse_policy(wide)


def test_root_prefixes_the_field_path():
    with pytest.raises(SpecError, match=r"^sweep\.templates\[2\]\.trail_bps: must be > 0"):
        parse_policy({"kind": "trailing_stop", "activation_bps": 0, "trail_bps": 0}, root="sweep.templates[2]")
