"""CapturedSampler's raw-unit interface (with real-time-chunking prefix) against the head's own, and
the control loop's cuda_graphs switch (CPU: the eager path, unchanged)."""
import numpy as np
import torch

from vla_ros.action.controller import ControlLoop
from vla_ros.action.flow_graph import CapturedSampler
from vla_ros.action.flow_head import FlowHeadConfig, FlowMatchingActionHead
from vla_ros.config.action import ActionConfig

torch.set_num_threads(1)


def _head():
    torch.manual_seed(0)
    head = FlowMatchingActionHead(FlowHeadConfig(vis_dim=16)).eval()
    with torch.no_grad():                          # non-trivial normalisation, so units matter
        head.action_mean.fill_(0.3)
        head.action_std.fill_(2.0)
    return head


def test_predict_actions_with_rtc_prefix_matches_the_head():
    head = _head()
    sampler = CapturedSampler(head, steps=4)
    rng = np.random.default_rng(0)
    vis, plan = rng.normal(size=(1, 5, 16)), rng.normal(size=(1, 2, 64))
    proprio = rng.normal(size=(1, 7))
    h, a = head.config.horizon, head.config.action_dim
    prefix, weights = rng.normal(size=(1, h, a)), np.linspace(1.0, 0.0, h)
    for pre, w in ((None, None), (prefix, weights)):
        torch.manual_seed(3)
        want = head.predict_actions(vis, None, plan, proprio, steps=4, prefix=pre, prefix_weights=w)
        torch.manual_seed(3)
        got = sampler.predict_actions(vis, None, plan, proprio, prefix=pre, prefix_weights=w)
        torch.testing.assert_close(got, want)
        assert got.shape == (1, h, a)
    # With the prefix fully weighted, the guided steps reproduce it (raw units in, raw units out).
    torch.manual_seed(4)
    frozen = sampler.predict_actions(vis, None, plan, proprio, prefix=prefix, prefix_weights=np.ones(h))
    np.testing.assert_allclose(frozen.numpy(), prefix, atol=1e-4)
    assert sampler.graphs.captures == 0 and sampler.graphs.eager_calls == 3     # CPU: plain sample()


def test_control_loop_uses_the_eager_head_on_cpu_even_with_cuda_graphs():
    loop = ControlLoop(_head(), ActionConfig(cuda_graphs=True))
    assert loop._captured is None
