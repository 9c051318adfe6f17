"""bench/scaling_model.py: the ring-allreduce model of issue 13, on hand-computed cases."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("scaling_model",
                                               os.path.join(ROOT, "bench", "scaling_model.py"))
sm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sm)


def test_ring_allreduce_by_hand():
    # 1.25e9 bytes = 10 Gbit: one link-second at 10 Gbit/s
    assert sm.ring_allreduce_s(1.25e9, 1, 10, 1e-3) == 0.0
    # N=2: 2*1/2 * 1 s + 2*1 * 1 ms
    assert sm.ring_allreduce_s(1.25e9, 2, 10, 1e-3) == pytest.approx(1.002, rel=1e-12)
    # N=4: 2*3/4 * 1 s + 2*3 * 1 ms ; at 25 Gbit/s the data term is 0.4 of that
    assert sm.ring_allreduce_s(1.25e9, 4, 10, 1e-3) == pytest.approx(1.506, rel=1e-12)
    assert sm.ring_allreduce_s(1.25e9, 4, 25, 1e-3) == pytest.approx(0.606, rel=1e-12)
    # the gradient of mlp-keras (669706 float32) on 8 ranks at 100 Gbit/s, 25 us:
    # 2*7/8 * 2678824*8 / 1e11 + 14 * 25e-6 = 3.750354e-4 + 3.5e-4
    assert sm.ring_allreduce_s(4 * 669706, 8, 100, 25e-6) == pytest.approx(7.250354e-4,
                                                                            rel=1e-6)


@pytest.mark.parametrize("args", [(1.0, 0, 10, 0.0), (-1.0, 2, 10, 0.0), (1.0, 2, 0, 0.0),
                                  (1.0, 2, 10, -1.0)])
def test_ring_allreduce_rejects_bad_input(args):
    with pytest.raises(ValueError, match="ring_allreduce_s"):
        sm.ring_allreduce_s(*args)


def _inputs():
    # one step of one process: 4 ms at the global batch 8, 1 ms at the per-rank batch 4,
    # 0.6 ms at 2, 0.5 ms at 1; the rank's step costs 0.1-0.12 ms more (its overhead)
    return {"preset": "toy", "params": 1.25e9 / 4 / 1000, "global_batch": 8, "samples": 80,
            "fused": {"8": 4e-3, "4": 1e-3, "2": 0.6e-3, "1": 0.5e-3},
            "rank": {"8": 4.1e-3, "4": 1.12e-3, "2": 0.7e-3, "1": 0.6e-3}}


def test_strong_scaling_by_hand():
    m = _inputs()                   # 1.25e6 bytes: 1 ms per link-second share at 10 Gbit/s
    one = sm.strong_scaling(m, 1, 10, 0.0)
    assert one == {"per_rank_batch": 8, "epoch_s": pytest.approx(10 * 4e-3), "efficiency": 1.0}
    two = sm.strong_scaling(m, 2, 10, 0.0)
    # per-rank batch 4: 1.12 ms + 2*1/2 * 1 ms = 2.12 ms per step, 10 steps
    assert two["per_rank_batch"] == 4
    assert two["epoch_s"] == pytest.approx(10 * 2.12e-3)
    assert two["efficiency"] == pytest.approx(4e-3 / (2 * 2.12e-3))


def test_batch_for_efficiency_by_hand():
    m = _inputs()
    # at per-rank batch 8, N=2, 100 Gbit/s, no latency: 4e-3 / (4.1e-3 + 0.1e-3) = 0.952;
    # N=4: 4e-3 / (4.1e-3 + 0.15e-3) = 0.941
    assert sm.weak_efficiency(m, 8, 4, 100, 0.0) == pytest.approx(4e-3 / 4.25e-3)
    assert sm.batch_for_efficiency(m, 100, 0.0, ranks=(1, 2, 4)) == 8
    # batch 4 at N=2: 1e-3 / (1.12e-3 + 0.1e-3) = 0.820 passes, at N=4 1e-3 / 1.27e-3 = 0.787
    # does not (so (1, 2, 4) needed batch 8); batches 1 and 2 fail at N=2 (0.714, 0.75)
    assert sm.batch_for_efficiency(m, 100, 0.0, ranks=(1, 2)) == 4
    # at 10 Gbit/s even batch 8 falls short (4e-3 / (4.1e-3 + 1e-3) = 0.78)
    assert sm.batch_for_efficiency(m, 10, 0.0, ranks=(1, 2)) is None


def test_tables_name_every_preset_and_rank_count():
    text = sm.tables([_inputs()], 25e-6, ranks=(1, 2, 4))
    rows = [line for line in text.splitlines() if line.startswith("| toy | ")]
    assert len(rows) == 1 + 3 + 1       # inputs, one per N, the batch for 80 %
    assert "| toy | 4 | 2 | " in text
