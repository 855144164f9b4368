from __future__ import annotations

import torch
from ignite.engine import Engine

from common.handlers import DelayedEMAHandler


def test_ema_follows_then_averages():
    net = torch.nn.Linear(1, 1, bias=False)
    net.weight.data.fill_(0.0)
    ema = DelayedEMAHandler(net, decay=0.5, every=2, start_iteration=3)

    def step(engine, batch):
        net.weight.data.fill_(float(engine.state.iteration))

    engine = Engine(step)
    ema.attach(engine)
    engine.run(range(2), max_epochs=1)
    assert ema.ema_network.weight.item() == 2.0  # before start_iteration: a copy
    engine = Engine(step)
    ema.attach(engine)
    engine.run(range(4), max_epochs=1)
    # iterations 1, 2 copy (-> 2.0); 3 is odd (no update); 4: 0.5 * 2 + 0.5 * 4 = 3
    assert ema.ema_network.weight.item() == 3.0
    assert not ema.ema_network.weight.requires_grad
