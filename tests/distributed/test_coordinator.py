"""The coordinator's state machine, driven directly (no Ray)."""

import json
import threading

import pytest

from gblend_ray.core.blend import Measurement
from gblend_ray.core.plan import Method, Segment
from gblend_ray.core.spec import RunSpec
from gblend_ray.distributed.coordinator import Coordinator, ProbeRoundError, ProbeTask
from gblend_ray.training.probe import ProbeResult

HEADS = ["video", "audio", "fused"]
MEAS = {"video": Measurement(0.9, 1.0, 0.6, 0.8), "audio": Measurement(0.9, 1.0, 0.2, 0.9),
        "fused": Measurement(0.9, 1.0, 0.5, 0.7)}


def _coord(tmp_path):
    spec = RunSpec()
    spec.blend.metric = "loss"  # the probe results below are losses
    return Coordinator(spec, Method("gblend", schedule="online"), HEADS, str(tmp_path))


def _result(head):
    return ProbeResult(head, MEAS[head], 0.5, 100.0, 100.5)


def test_round_from_inline_results_is_recorded_once(tmp_path):
    coord = _coord(tmp_path)
    seg = Segment(0, 10, 10)
    first = coord.round(seg, "ckpt", {h: _result(h) for h in HEADS})
    w = first["weights"]
    assert sum(w.values()) == pytest.approx(1.0) and w["video"] > w["audio"] and not first["replayed"]
    again = coord.round(seg, "ckpt", None)  # a restarted worker asks again: no probes, same weights
    assert again["weights"] == w and again["replayed"]
    saved = json.loads((tmp_path / "trajectory.json").read_text())
    assert [r["epoch"] for r in saved] == [0]
    assert saved[0]["heads"]["audio"]["probe_started"] == 100.0


def test_round_dispatches_tasks_to_probe_slots(tmp_path):
    coord = _coord(tmp_path)
    answer = {}
    t = threading.Thread(target=lambda: answer.update(coord.round(Segment(10, 5, 5), "ck")["weights"]))
    t.start()
    tasks = [coord.next_task(slot, wait_s=5) for slot in range(3)]
    assert {task.head for task in tasks} == set(HEADS) and all(task.checkpoint == "ck" for task in tasks)
    for slot, task in enumerate(tasks):
        coord.submit(slot, task, _result(task.head))
    t.join(5)
    assert sum(answer.values()) == pytest.approx(1.0)
    assert coord.next_task(0, wait_s=0.05) == "idle"
    coord.finish()
    assert coord.next_task(0) is None


def test_a_restarted_slot_gives_its_task_back(tmp_path):
    coord = _coord(tmp_path)
    coord._queue.append(ProbeTask(0, "video", 0, 5, "ck"))
    first = coord.next_task(0, wait_s=1)
    assert first.head == "video"
    # slot 0 died and its trial restarted: asking again re-queues the lost task first
    assert coord.next_task(0, wait_s=1) == first


def test_a_failed_probe_experiment_fails_the_round(tmp_path):
    coord = _coord(tmp_path)

    def launch():
        raise RuntimeError("trial crashed: out of memory")

    coord.start_probes(launch)
    with pytest.raises(ProbeRoundError, match="out of memory"):
        coord.round(Segment(0, 10, 10), "ck")


def test_a_round_asked_again_while_its_probes_run_is_answered_by_that_round(tmp_path):
    """A worker group restarted from the boundary's checkpoint while an overlapped round was
    in flight asks for it again: the probes are queued once and both askers get its weights."""
    coord = _coord(tmp_path)
    answers = []
    askers = [threading.Thread(target=lambda: answers.append(coord.round(Segment(10, 5, 5), "ck"))) for _ in range(2)]
    askers[0].start()
    tasks = [coord.next_task(slot, wait_s=5) for slot in range(3)]
    askers[1].start()
    assert coord.next_task(3, wait_s=0.3) == "idle"  # nothing queued a second time
    for slot, task in enumerate(tasks):
        coord.submit(slot, task, _result(task.head))
    for t in askers:
        t.join(10)
    assert len(answers) == 2 and answers[0]["weights"] == answers[1]["weights"]
    assert sorted(a["replayed"] for a in answers) == [False, True]
    assert [r["epoch"] for r in coord.trajectory()] == [10]


def test_rank_zeros_switch_point_goes_into_the_rounds_record(tmp_path):
    spec = RunSpec()
    spec.probes.overlap = True
    coord = Coordinator(spec, Method("gblend", schedule="online"), HEADS, str(tmp_path))
    w = coord.round(Segment(0, 10, 10), "ck", {h: _result(h) for h in HEADS})["weights"]
    assert coord.trajectory()[0]["applied"] is None  # not yet in force
    coord.record_training(1, 0, w, 11, 0.1, {"epoch": 3, "step": 7})
    assert coord.trajectory()[0]["applied"] is None  # rank 1's is in trained_weights.json only
    coord.record_training(0, 0, w, 10, 0.1, {"epoch": 3, "step": 7})
    saved = json.loads((tmp_path / "trajectory.json").read_text())
    assert saved[0]["applied"] == {"epoch": 3, "step": 7} == coord.trajectory()[0]["applied"]
    trained = json.loads((tmp_path / "trained_weights.json").read_text())
    assert [(t["rank"], t["applied"]) for t in trained] == [(1, {"epoch": 3, "step": 7}), (0, {"epoch": 3, "step": 7})]
