"""Schedules: paper presets, validation errors, queries, file round trips, scaling, mini presets, split rule."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest

from msg_ray.presets import PRESETS, get_schedule, miniaturize
from msg_ray.schedule import Schedule, Stage, full, paper_stage_starts, schedule_from_structures
from msg_ray.structure import Structure

# Transcribed independently from the paper (tables 2, 8, 10; totals from appendix D/J), to check the presets.
PAPER_TABLES = {
    "sch1-b": (
        "bert",
        900_000,
        [0, 200_000, 400_000, 500_000, 600_000, 700_000],
        ["(512,768,8,3)", "(512,3072,8,3)", "(512,3072,8,6)", "(768,3072,8,6)", "(768,3072,12,6)", "(768,3072,12,12)"],
    ),
    "sch1-l": (
        "bert",
        900_000,
        [0, 200_000, 400_000, 500_000, 600_000, 700_000],
        [
            "(768,1024,12,6)",
            "(768,4096,12,6)",
            "(768,4096,12,12)",
            "(1024,4096,12,12)",
            "(1024,4096,16,12)",
            "(1024,4096,16,24)",
        ],
    ),
    "sch1-g": (
        "gpt",
        240_000,
        [0, 50_000, 100_000, 130_000, 160_000, 190_000],
        ["(512,768,8,3)", "(512,3072,8,3)", "(512,3072,8,6)", "(768,3072,8,6)", "(768,3072,12,6)", "(768,3072,12,12)"],
    ),
    "rapid-l": (
        "bert",
        800_000,
        [0, 400_000, 420_000, 440_000, 500_000],
        ["(512,1024,8,6)", "(512,4096,8,6)", "(1024,4096,8,6)", "(1024,4096,16,6)", "(1024,4096,16,24)"],
    ),
    "sch0-l": (
        "bert",
        900_000,
        [0, 200_000, 400_000, 600_000],
        ["(768,1024,16,6)", "(768,4096,16,6)", "(768,4096,16,12)", "(768,4096,16,24)"],
    ),
    "sch0-b": (
        "bert",
        900_000,
        [0, 200_000, 400_000, 600_000, 700_000],
        ["(768,768,12,3)", "(768,768,12,6)", "(768,768,12,9)", "(768,768,12,12)", "(768,3072,12,12)"],
    ),
    "sch-gpt-new": (
        "gpt",
        100_000,
        [0, 30_000, 60_000, 80_000],
        ["(512,768,8,12)", "(768,768,8,12)", "(768,768,12,12)", "(768,3072,12,12)"],
    ),
}


def _sched(**kw) -> Schedule:
    base = dict(
        arch="gpt",
        stages=[{"structure": [64, 128, 1, 2], "start": 0}, {"structure": [64, 256, 1, 2], "start": 100}],
        total_steps=300,
        phi=50,
        name="t",
    )
    base.update(kw)
    return Schedule(**base)


@pytest.mark.parametrize("name", sorted(PAPER_TABLES))
def test_paper_presets_match_tables(name):
    arch, total, starts, structures = PAPER_TABLES[name]
    s = PRESETS[name]
    assert (s.arch, s.total_steps, s.phi, s.head_dim, s.operator) == (arch, total, 5000, 64, "msg")
    assert s.boundaries() == starts
    assert [str(st.structure) for st in s.stages] == structures
    assert s.name == name and not s.is_full


@pytest.mark.parametrize("name", sorted(PAPER_TABLES))
def test_mini_presets_keep_shape_and_are_small(name):
    paper, mini = PRESETS[name], PRESETS[f"mini-{name}"]
    assert mini.arch == paper.arch and len(mini.stages) == len(paper.stages)
    grown = [a.structure.grown_dims(b.structure) for a, b in pairwise(paper.stages)]
    mini_grown = [a.structure.grown_dims(b.structure) for a, b in pairwise(mini.stages)]
    assert mini_grown == grown  # same dimensions grow, in the same order
    fractions = [b / paper.total_steps for b in paper.boundaries()]
    assert [b / mini.total_steps for b in mini.boundaries()] == pytest.approx(fractions, abs=1 / mini.total_steps)
    assert mini.total_steps <= 2000 and 0 < mini.phi <= 50
    t = mini.target
    assert t.hidden_dim <= 128 and t.ffn_dim <= 512 and t.layer_num <= 4
    assert PRESETS[f"mini-full-{mini.arch}"].target == t


def test_miniaturize_refuses_to_merge_growths():
    with pytest.raises(ValueError, match="changes which dimensions grow"):
        miniaturize(PRESETS["sch1-b"], target=Structure(16, 512, 4, 4), total_steps=900, phi=50, head_dim=32, name="x")


def test_full_presets():
    for name in ("mini-full-gpt", "mini-full-bert", "full-bert-base", "full-bert-large", "full-gpt2"):
        s = PRESETS[name]
        assert s.is_full and s.growth_steps() == [] and s.boundaries() == [0]
    assert PRESETS["full-bert-large"].target == PRESETS["sch1-l"].target
    assert PRESETS["full-gpt2"].target == PRESETS["sch1-g"].target


def test_queries():
    s = PRESETS["sch1-g"]
    assert s.target == Structure(768, 3072, 12, 12)
    assert s.growth_steps() == [50_000, 100_000, 130_000, 160_000, 190_000]
    assert s.stage_lengths() == [50_000, 50_000, 30_000, 30_000, 30_000, 50_000]
    assert s.stage_index(0) == 0 and s.stage_index(49_999) == 0 and s.stage_index(50_000) == 1
    assert s.stage_index(239_999) == 5 and s.stage_index(10**9) == 5
    assert s.structure_at(130_000) == Structure(768, 3072, 8, 6)
    with pytest.raises(ValueError, match="step"):
        s.stage_index(-1)


def test_fraction_starts_resolve():
    s = _sched(stages=[{"structure": [64, 128, 1, 2], "start": 0.0}, {"structure": [64, 256, 1, 2], "start": 0.25}])
    assert s.boundaries() == [0, 75]
    assert s.scaled(total_steps=1000).boundaries() == [0, 250]


def test_full_helper():
    s = full("bert", (128, 512, 4, 4), 500, head_dim=32)
    assert s.is_full and s.name == "full-bert" and s.target == Structure(128, 512, 4, 4) and s.head_dim == 32


# ---------------------------------------------------------------- validation: every error names stage + field
@pytest.mark.parametrize(
    "kw, pattern",
    [
        ({"arch": "mamba"}, r"arch must be one of"),
        ({"arch": "gpt", "kv_group_size": 2}, r"kv_group_size=2: arch .gpt. has no grouped-query"),
        (
            {"arch": "llama", "kv_group_size": 3},
            r"stages\[0\]\.structure\.head_num=1 must be a multiple of kv_group_size=3",
        ),
        ({"arch": "llama", "kv_group_size": 0}, r"kv_group_size must be an int >= 1"),
        ({"operator": "zero"}, r"operator must be one of"),
        ({"depth_init": "copy"}, r"depth_init must be one of"),
        ({"total_steps": 0}, r"total_steps must be an int >= 1"),
        ({"total_steps": 300.0}, r"total_steps must be an int"),
        ({"phi": -1}, r"phi must be an int >= 0"),
        ({"head_dim": 0}, r"head_dim must be an int >= 1"),
        ({"stages": []}, r"at least one stage"),
        ({"stages": "abc"}, r"stages must be a list"),
        ({"stages": [[64, 128, 1, 2]]}, r"stages\[0\] must be a Stage or a dict"),
        ({"stages": [{"structure": [64, 128, 1, 2]}]}, r"stages\[0\]: .*missing keys \['start'\]"),
        ({"stages": [{"structure": [64, 128, 1, 2], "start": 0, "x": 1}]}, r"stages\[0\]: unknown keys \['x'\]"),
        ({"stages": [{"structure": [64, 128, 1], "start": 0}]}, r"stages\[0\]\.structure"),
        ({"stages": [{"structure": [64, 128, 0, 2], "start": 0}]}, r"stages\[0\]\.structure.*head_num"),
        ({"stages": [{"structure": [64, 128, 1, 2], "start": -1}]}, r"stages\[0\]\.start must be >= 0"),
        ({"stages": [{"structure": [64, 128, 1, 2], "start": 1.5}]}, r"stages\[0\]\.start as a float"),
        ({"stages": [{"structure": [64, 128, 1, 2], "start": True}]}, r"stages\[0\]\.start must be an int"),
        ({"stages": [{"structure": [64, 128, 1, 2], "start": 5}]}, r"stages\[0\]\.start must be 0"),
    ],
)
def test_validation_errors(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        _sched(**kw)


def _two(second: dict, **kw) -> Schedule:
    return _sched(stages=[{"structure": [64, 128, 1, 2], "start": 0}, second], **kw)


def test_validation_errors_between_stages():
    with pytest.raises(ValueError, match=r"Schedule 't': stages\[1\]\.start=300 resolves to step 300 >= total"):
        _two({"structure": [64, 256, 1, 2], "start": 300})
    with pytest.raises(ValueError, match=r"stages\[1\]\.start=0\.9999 resolves to step 300"):
        _two({"structure": [64, 256, 1, 2], "start": 0.9999})
    with pytest.raises(ValueError, match=r"stages\[1\]\.start=0 \(step 0\) must be after stages\[0\]"):
        _two({"structure": [64, 256, 1, 2], "start": 0})
    with pytest.raises(ValueError, match=r"stages\[1\]\.structure: growth may not shrink ffn_dim"):
        _two({"structure": [128, 64, 1, 2], "start": 100})
    with pytest.raises(ValueError, match=r"stages\[1\]\.structure \(64,128,1,2\) grows no dimension"):
        _two({"structure": [64, 128, 1, 2], "start": 100})
    with pytest.raises(ValueError, match=r"stages\[1\]\.start: stage 1 lasts 20 steps, shorter than phi=50"):
        _two({"structure": [64, 256, 1, 2], "start": 280})
    three = [
        {"structure": [64, 128, 1, 2], "start": 0},
        {"structure": [64, 256, 1, 2], "start": 100},
        {"structure": [64, 256, 2, 2], "start": 130},
    ]
    with pytest.raises(ValueError, match=r"stages\[1\]\.start: stage 1 lasts 30 steps"):
        _sched(stages=three)
    # Ramps only constrain msg with phi > 0; the first stage has no ramp at all.
    assert _two({"structure": [64, 256, 1, 2], "start": 280}, operator="nomask").growth_steps() == [280]
    assert _two({"structure": [64, 256, 1, 2], "start": 280}, phi=0).growth_steps() == [280]
    assert _two({"structure": [64, 256, 1, 2], "start": 10}).boundaries() == [0, 10]


def test_stage_alone_validates():
    with pytest.raises(ValueError, match=r"Stage\.start must be >= 0"):
        Stage(structure=Structure(8, 8, 1, 1), start=-3)
    assert Stage(structure="(8,16,1,1)", start=0).structure == Structure(8, 16, 1, 1)


def test_from_dict_errors():
    d = PRESETS["mini-sch1-b"].to_dict()
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['stage'\]"):
        Schedule.from_dict({**d, "stage": []})
    with pytest.raises(ValueError, match=r"Schedule\.total_steps is missing"):
        Schedule.from_dict({k: v for k, v in d.items() if k != "total_steps"})
    with pytest.raises(ValueError, match=r"target \(128,512,4,8\) differs from the last stage"):
        Schedule.from_dict({**d, "target": [128, 512, 4, 8]})


# ---------------------------------------------------------------- files, scaling, lookup
@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
@pytest.mark.parametrize("name", ["sch1-l", "mini-rapid-l", "mini-full-gpt"])
def test_file_round_trip(tmp_path, suffix, name):
    s = PRESETS[name].replace(operator="nomask", depth_init="random")
    path = s.save(tmp_path / f"sub/{name}{suffix}")
    assert Schedule.load(path) == s
    assert get_schedule(str(path)) == s


def test_round_trip_keeps_fractions(tmp_path):
    s = _sched(stages=[{"structure": [64, 128, 1, 2], "start": 0}, {"structure": [64, 256, 1, 2], "start": 0.5}])
    for suffix in (".yaml", ".json"):
        loaded = Schedule.load(s.save(tmp_path / f"f{suffix}"))
        assert loaded == s and isinstance(loaded.stages[1].start, float)
    assert json.loads((tmp_path / "f.json").read_text())["stages"][1] == {"structure": [64, 256, 1, 2], "start": 0.5}


def test_file_errors(tmp_path):
    with pytest.raises(ValueError, match="suffix must be"):
        PRESETS["sch1-b"].save(tmp_path / "s.txt")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "arch: gpt\ntotal_steps: 100\nstages:\n  - {structure: [8, 16, 1, 1], start: 0}\n"
        "  - {structure: [8, 8, 1, 1], start: 50}\n"
    )
    with pytest.raises(ValueError, match=r"stages\[1\]\.structure: growth may not shrink ffn_dim"):
        get_schedule(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not valid json"):
        Schedule.load(broken)


def test_scaled():
    s = PRESETS["sch1-b"].scaled(total_steps=9_000, phi=50)
    assert s.boundaries() == [0, 2_000, 4_000, 5_000, 6_000, 7_000] and s.phi == 50 and s.total_steps == 9_000
    assert [x.structure for x in s.stages] == [x.structure for x in PRESETS["sch1-b"].stages]
    with pytest.raises(ValueError, match=r"stages\[1\]\.start: stage 1 lasts 2000 steps, shorter than phi=5000"):
        PRESETS["sch1-b"].scaled(total_steps=9_000)  # phi 5000 no longer fits a 2000-step stage


def test_get_schedule_presets_and_overrides():
    assert get_schedule("sch1-b") is PRESETS["sch1-b"]
    s = get_schedule("mini-sch1-g", total_steps=600, phi=25, operator="net2net", name="x")
    assert s.total_steps == 600 and s.phi == 25 and s.operator == "net2net" and s.name == "x"
    assert s.boundaries() == [0, 125, 250, 325, 400, 475]
    with pytest.raises(ValueError, match=r"unknown schedule 'sch2-b'.*presets: .*mini-sch1-b.*sch1-b"):
        get_schedule("sch2-b")
    with pytest.raises(ValueError, match=r"cannot override \['stages'\]"):
        get_schedule("sch1-b", stages=[])
    with pytest.raises(ValueError, match=r"operator must be one of"):
        get_schedule("sch1-b", operator="bogus")


# ---------------------------------------------------------------- the paper's stage-duration rule
@pytest.mark.parametrize("total, n", [(900_000, 6), (1000, 4), (7, 7), (100, 1), (1200, 5)])
def test_paper_stage_starts(total, n):
    starts = paper_stage_starts(total, n)
    assert len(starts) == n and starts[0] == 0
    assert all(b > a for a, b in pairwise(starts)) and starts[-1] < total
    lengths = [b - a for a, b in zip(starts, starts[1:] + [total], strict=True)]
    assert sum(lengths) == total
    if n > 1 and total >= 100 * n:  # early stages slightly longer, all roughly equal
        assert all(a >= b for a, b in pairwise(lengths))
        assert lengths[0] <= 1.25 * lengths[-1] and lengths[0] > lengths[-1]


def test_paper_stage_starts_equal_and_errors():
    assert paper_stage_starts(1000, 4, early_weight=1.0) == [0, 250, 500, 750]
    with pytest.raises(ValueError, match="n_stages"):
        paper_stage_starts(100, 0)
    with pytest.raises(ValueError, match="total_steps"):
        paper_stage_starts(3, 4)
    with pytest.raises(ValueError, match="early_weight"):
        paper_stage_starts(100, 2, early_weight=0.5)


def test_schedule_from_structures():
    structures = [(64, 128, 1, 2), (64, 256, 1, 2), (128, 256, 1, 2), (128, 256, 2, 4)]
    s = schedule_from_structures("gpt", structures, 1000, phi=50, name="auto")
    assert s.boundaries() == paper_stage_starts(1000, 4) and s.target == Structure(128, 256, 2, 4)
    with pytest.raises(ValueError, match=r"stages\[2\]\.structure: growth may not shrink"):
        schedule_from_structures("gpt", [(64, 128, 1, 2), (64, 256, 1, 2), (32, 256, 1, 2)], 1000, phi=50)
