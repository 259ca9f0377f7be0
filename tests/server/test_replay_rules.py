"""What replay compares (server/manifests/_replay.py): volatile fields left out, lists
compared item by item, every difference named by its path with both values. Replays of
real runs are tested in codeworld/test_replay.py, agent/test_replay.py and test_cli.py."""

from __future__ import annotations

from scillm.codeworld.v1 import codeworld_pb2 as cw
from scillm.server.manifests._replay import comparable, differences, split


def test_differences_name_each_path_with_both_values() -> None:
    assert differences({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2]}) == []
    assert differences({"a": 1, "b": {"c": [1, {"d": "x"}]}},
                       {"a": 2, "b": {"c": [1, {"d": "y"}]}}) == [
        "a: 1 -> 2", "b.c[1].d: 'x' -> 'y'"]
    assert differences({"a": 1}, {"b": 1}) == ["a: 1 -> None", "b: None -> 1"]
    assert differences([1, 2], [1, 2, 3]) == [": [1, 2] -> [1, 2, 3]"]
    assert differences([1, 2], [2, 1]) == ["[0]: 1 -> 2", "[1]: 2 -> 1"]
    assert differences({"z": 1, "a": 1}, {"z": 2, "a": 2}) == ["a: 1 -> 2", "z: 1 -> 2"]
    assert differences({"a": {}}, {"a": 0}) == ["a: {} -> 0"]
    assert differences(1, 1) == [] and differences("x", "y") == [": 'x' -> 'y'"]


def test_volatile_fields_are_left_out_at_every_depth() -> None:
    summary = cw.CodeWorldRunSummary(items=2, succeeded=1)
    summary.manifest.run_id = "r1"
    run = summary.rankings.add(task_id="t")
    run.entries.add(strategy="s", rank=1, score=0.5, metrics={"correctness": 1.0})
    other = cw.CodeWorldRunSummary()
    other.CopyFrom(summary)
    other.manifest.run_id = "r2"
    other.manifest.request_id = "q"
    assert comparable(summary) == comparable(other)
    assert "manifest" not in comparable(summary)
    assert comparable(summary)["items"] == 2 and comparable(summary)["succeeded"] == 1
    other.succeeded = 2
    assert differences(comparable(summary), comparable(other)) == ["succeeded: 1 -> 2"]


def test_without_rankings_nothing_is_volatile() -> None:
    fixed, volatile = split(cw.CodeWorldRunSummary(items=1))
    assert fixed == {"items": 1} and volatile == {}


def test_ranks_without_a_listed_volatile_metric_move_speed_apart() -> None:
    summary = cw.CodeWorldRunSummary()  # stored before volatile_metrics existed
    summary.rankings.add(task_id="t").entries.add(
        strategy="a", rank=1, score=0.9, metrics={"speed": 0.3, "brevity": 0.5})
    fixed, volatile = split(summary)
    assert fixed["rankings"] == {"t": {"a": {"brevity": 0.5}}}
    assert volatile["rankings"] == {"t": {"a": {"rank": 1, "score": 0.9, "speed": 0.3}}}
    summary.volatile_metrics.append("brevity")
    fixed, volatile = split(summary)
    assert fixed["rankings"] == {"t": {"a": {"speed": 0.3}}}
    assert volatile["rankings"]["t"]["a"] == {"rank": 1, "score": 0.9, "brevity": 0.5}
