import torch

from gblend_ray.training.stopping import EarlyStopping


def test_stops_after_patience_and_restores_the_best_epoch():
    model = torch.nn.Linear(2, 1)
    losses = iter([3.0, 2.0, 2.5, 2.1, 2.2])
    stopper = EarlyStopping(model, lambda: next(losses), patience=3)
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert not stopper.step(1) and not stopper.step(2)  # epoch 2 is the best so far
    stopped = []
    for epoch in (3, 4, 5):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        stopped.append(stopper.step(epoch))
    assert stopped == [False, False, True] and stopper.stopped_at == 5
    stopper.restore()
    assert torch.all(model.weight == 1.0)  # the parameters measured at epoch 2
    assert stopper.summary() == {"best_epoch": 2, "best_val_loss": 2.0, "stopped_at": 5, "patience": 3}
