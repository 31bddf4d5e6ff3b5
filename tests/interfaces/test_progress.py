"""The terminal a person reads: a bar per run on a terminal, lines for the rounds, a line
per epoch only with --verbose; nothing per epoch on a pipe."""

import io

from gblend_ray.interfaces.progress import ProgressPrinter


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _epoch(k: int) -> dict:
    return {"epoch": k, "weights/video": 0.7, "weights/audio": 0.0, "weights/fused": 0.3,
            "val/video/top1": 0.5 + k / 100, "val/fused/top1": 0.4}


ROUND = {"epoch": 2, "weights": {"video": 0.7, "audio": 0.0, "fused": 0.3}, "fallback": "previous"}


def _drive(printer: ProgressPrinter) -> None:
    for k in (1, 2):
        printer.on_epoch(_epoch(k))
    printer.on_round(ROUND)
    printer.on_round(ROUND)  # a relayed record seen twice is shown once
    for k in (3, 4):
        printer.on_epoch(_epoch(k))
    printer.on_end({})


def test_a_pipe_gets_one_line_per_round_and_none_per_epoch():
    out = io.StringIO()
    _drive(ProgressPrinter("gblend:online-seed0", 4, stream=out))
    assert out.getvalue().splitlines() == [
        ("[gblend:online-seed0] super-epoch 1 from epoch 2: weights video=0.700 audio=0.000 fused=0.300 "
         "(every G <= 0: kept the previous weights)")]


def test_verbose_adds_a_line_per_epoch_with_the_weights_and_validation_metric():
    out = io.StringIO()
    _drive(ProgressPrinter("naive-seed0", 4, every_epoch=True, stream=out))
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and lines[0] == ("[naive-seed0] epoch 1/4  weights video=0.700 audio=0.000 "
                                            "fused=0.300  val top-1 video=0.510 fused=0.400")
    assert lines[3].startswith("[naive-seed0] epoch 3/4, super-epoch 1  weights")


def test_a_terminal_gets_a_bar_over_the_epochs_with_the_weights_in_force():
    out = Terminal()
    printer = ProgressPrinter("gblend:online-seed0", 4, stream=out)
    for k in (1, 2):
        printer.on_epoch(_epoch(k))
    printer.on_round(ROUND)
    printer.on_epoch(_epoch(3))
    screen = out.getvalue()
    assert "super-epoch 1 from epoch 2" in screen  # the round's line, written above the bar
    assert "3/4" in screen and "weights video=0.700 audio=0.000 fused=0.300" in screen
    assert "val top-1 video=0.530 fused=0.400" in screen
    assert "epoch 3/4" not in screen  # a bar, not a line per epoch
    printer.on_end({})
    assert printer._bar is None


def test_a_resumed_run_says_where_it_resumed_and_counts_its_recorded_rounds():
    out = io.StringIO()
    printer = ProgressPrinter("gblend:online-seed0", 4, stream=out)
    printer.on_resume(2, [_epoch(1), _epoch(2)], [ROUND])
    printer.on_round(ROUND)  # recorded before the resume: not shown again
    printer.on_round({**ROUND, "epoch": 4, "fallback": None})
    assert out.getvalue().splitlines() == [
        "[gblend:online-seed0] resumed from the checkpoint at epoch 2 (1 round(s) recorded)",
        "[gblend:online-seed0] super-epoch 2 from epoch 4: weights video=0.700 audio=0.000 fused=0.300"]
