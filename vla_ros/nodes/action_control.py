"""The control tick in its own process: one Python thread (the deadline loop) plus DDS's own threads,
so no ROS callback or torch code can hold the GIL when a tick is due. A publish-only node
`<action>_control` in the action node's namespace sends the commands; inputs, chunks and statistics
move through the shared-memory slots of vla_ros.action.inference_proc.

Started and stopped by the action node (ControlProcess); never run on its own.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
from typing import Dict

from vla_ros.action.inference_proc import InferenceChannels, stop_child
from vla_ros.action.realtime_loop import STAT_KEYS, stats_from_slot
from vla_ros.action.shm import SeqSlot
from vla_ros.config.action import ActionConfig


class ControlProcess:
    """Action-node side: spawn, read statistics, stop."""

    def __init__(self, cfg: ActionConfig, head_config, channels: InferenceChannels, topic_names: Dict[str, str],
                 node_name: str, namespace: str):
        self.stats_slot = SeqSlot({'v': (len(STAT_KEYS),)})
        self._stats_buf = self.stats_slot.buffers()
        self.channels = channels
        ctx = multiprocessing.get_context('spawn')
        self.process = ctx.Process(
            target=control_main, name='action-control', daemon=True,
            args=(dataclasses.asdict(cfg), dataclasses.asdict(head_config), channels, self.stats_slot, topic_names,
                  f'{node_name}_control', namespace, os.getpid()))

    def start(self) -> None:
        self.process.start()

    def stats(self) -> Dict[str, object]:
        out = stats_from_slot(self.stats_slot, self._stats_buf)
        out['control_alive'] = self.process.is_alive()
        return out

    def close(self, timeout: float = 5.0) -> None:
        stop_child(self.channels, self.process, timeout)


def control_main(cfg_dict, head_cfg_dict, channels: InferenceChannels, stats_slot: SeqSlot,
                 topic_names: Dict[str, str], node_name: str, namespace: str, parent_pid: int) -> None:
    """Entry point of the control process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C reaches the whole group: the parent stops us
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from vla_ros.action.controller import ControlLoop
    from vla_ros.action.flow_head import FlowHeadConfig, FlowMatchingActionHead
    from vla_ros.action.inference_proc import ChunkInbox
    from vla_ros.action.realtime_loop import InputMirror, RealtimeController
    from vla_ros.config.base import config_from_dict
    from vla_ros.nodes.command_publisher import CommandPublisher

    from vla_ros.os_realtime import apply_thread_realtime, lock_memory

    cfg: ActionConfig = config_from_dict(ActionConfig, cfg_dict)
    rt_cfg = cfg.realtime
    # Threads inherit their creator's scheduling: DDS's own threads (writer, events, receive) are made
    # by rclpy.init/create_node below, so give this thread SCHED_FIFO just under the tick first. Else a
    # publish waits on a DDS lock held by a thread the busy CPU does not schedule (measured: 0.8 s).
    dds_rt = apply_thread_realtime(max(rt_cfg.fifo_priority - 1, 0), rt_cfg.control_cpus)
    if rt_cfg.lock_memory:
        dds_rt += ', ' + lock_memory()
    if rt_cfg.dds_transport == 'udp':
        os.environ.setdefault('FASTDDS_BUILTIN_TRANSPORTS', 'UDPv4')   # read when the participant is made
    if cfg.realtime.async_publish:
        os.environ.setdefault('RMW_FASTRTPS_PUBLICATION_MODE', 'ASYNCHRONOUS')   # read when publishers are made
    rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(node_name, namespace=namespace)
    try:
        sink = CommandPublisher(node, cfg, topic_names)
        # The tick never runs the head; it only needs its shape (ControlLoop's constructor takes one).
        loop = ControlLoop(FlowMatchingActionHead(FlowHeadConfig(**head_cfg_dict)), cfg)
        node.get_logger().info(f'control process DDS threads: {dds_rt}')
        rt = RealtimeController(loop, cfg, sink, backend=ChunkInbox(channels), log=node.get_logger().info,
                                inputs=InputMirror(channels), stats_slot=stats_slot)
        stop = channels.stop.buffers()

        def should_stop() -> bool:
            channels.stop.read_into(stop)
            return bool(stop['v'][0]) or os.getppid() != parent_pid

        rt.run_forever(should_stop)
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
