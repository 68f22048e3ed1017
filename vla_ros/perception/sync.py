"""Approximate-time pairing of camera images with joint states.

`message_filters.ApproximateTimeSynchronizer` is used when importable (real ROS 2 installs);
otherwise `ApproxTimePairer`, a small pure-Python pairer (testable without ROS): an image is
paired with the joint state nearest in stamp, within `slop`, once a joint state at or after the
image stamp has arrived (so a closer one cannot still come). Unmatched messages age out of
bounded queues.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional

from vla_ros.timing import stamp_to_ns

try:
    import message_filters  # type: ignore
except ImportError:  # pragma: no cover - depends on the install
    message_filters = None


class ApproxTimePairer:
    def __init__(self, slop_s: float, queue_size: int, callback: Callable[[Any, Any], None],
                 stamp_ns: Callable[[Any], int]):
        self.slop_ns = int(slop_s * 1e9)
        self.callback = callback
        self.stamp_ns = stamp_ns
        self.images: deque = deque(maxlen=queue_size)
        self.states: deque = deque(maxlen=queue_size)
        self.dropped_images = 0

    def add_image(self, msg) -> None:
        if len(self.images) == self.images.maxlen:
            self.dropped_images += 1
        self.images.append((self.stamp_ns(msg), msg))
        self._match()

    def add_joint_state(self, msg) -> None:
        self.states.append((self.stamp_ns(msg), msg))
        self._match()

    def _match(self) -> None:
        while self.images and self.states:
            t_img, img = self.images[0]
            if self.states[-1][0] < t_img:
                return                          # a closer joint state may still come
            best = min(self.states, key=lambda s: abs(s[0] - t_img))
            self.images.popleft()
            if abs(best[0] - t_img) > self.slop_ns:
                self.dropped_images += 1
                continue
            while self.states and self.states[0][0] < best[0]:
                self.states.popleft()           # older states can never pair with a later image
            self.callback(img, best[1])


class _FallbackSync:
    """Subscribes both topics itself and feeds an ApproxTimePairer."""

    def __init__(self, node, image_type, image_topic, image_qos, js_type, js_topic, js_qos, pairer,
                 callback_group=None):
        self.pairer = pairer
        node.create_subscription(image_type, image_topic, pairer.add_image, image_qos,
                                 callback_group=callback_group)
        node.create_subscription(js_type, js_topic, pairer.add_joint_state, js_qos, callback_group=callback_group)


def make_image_joint_sync(node, image_topic: str, js_topic: str, image_qos, js_qos, slop_s: float,
                          queue_size: int, callback: Callable[[Any, Any], None], callback_group=None,
                          use_message_filters: Optional[bool] = None):
    """Returns the synchroniser object (keep a reference); calls `callback(image, joint_state)`."""
    from sensor_msgs.msg import Image, JointState

    use_mf = message_filters is not None if use_message_filters is None else use_message_filters
    if use_mf:
        kw = {'callback_group': callback_group} if callback_group is not None else {}
        subs = [message_filters.Subscriber(node, Image, image_topic, qos_profile=image_qos, **kw),
                message_filters.Subscriber(node, JointState, js_topic, qos_profile=js_qos, **kw)]
        sync = message_filters.ApproximateTimeSynchronizer(subs, queue_size, slop_s)
        sync.registerCallback(callback)
        sync._vla_subscribers = subs  # keep alive
        return sync
    pairer = ApproxTimePairer(slop_s, queue_size, callback, lambda m: stamp_to_ns(m.header.stamp))
    return _FallbackSync(node, Image, image_topic, image_qos, JointState, js_topic, js_qos, pairer, callback_group)
