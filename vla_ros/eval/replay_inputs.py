"""The stack's inputs as recorded in a bag: camera frames with the joint state and instruction in force.

Topics are found by type, like the evaluator: sensor_msgs/Image or sensor_msgs/CompressedImage for
the camera (raw preferred when both exist), sensor_msgs/JointState, std_msgs/String on a topic named
`.../instruction`, vla_ros_msgs/TaskStatus for episode boundaries. Messages are taken in log-time
order, which is the order the live nodes received them in, so each frame gets the newest joint
state received before it (what the perception node's newest-pair sync does too).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional

import numpy as np

from vla_ros.eval.bag_io import bag_summary, read_bag
from vla_ros.perception.image_codec import decompress_to_rgb
from vla_ros.perception.image_conversion import image_msg_to_rgb

TYPE_IMAGE = 'sensor_msgs/msg/Image'
TYPE_COMPRESSED = 'sensor_msgs/msg/CompressedImage'
TYPE_JOINT_STATE = 'sensor_msgs/msg/JointState'
TYPE_STRING = 'std_msgs/msg/String'
TYPE_STATUS = 'vla_ros_msgs/msg/TaskStatus'


class ReplayInputError(ValueError):
    pass


@dataclass
class ReplayFrame:
    index: int                  # 0-based frame counter over the bag
    log_ns: int                 # when the recorder received the image
    stamp_ns: int               # image header stamp (travels with tokens, plans and chunks)
    frame_id: str               # image header.frame_id (camera frame)
    rgb: np.ndarray             # HxWx3 uint8
    joint_names: List[str]
    joint_positions: Optional[np.ndarray]   # float64 [J] rad, None before the first joint state
    instruction: str
    episode: int                # TaskStatus.episode in force (-1 before the first status)


@dataclass
class ReplaySource:
    image_topic: str
    joint_topic: Optional[str]
    instruction_topic: Optional[str]
    status_topic: Optional[str]
    num_frames: int


def find_inputs(bag) -> ReplaySource:
    topics = bag_summary(bag)['topics']

    def first(msgtype, suffix=''):
        names = sorted(n for n, info in topics.items() if info['type'] == msgtype and n.endswith(suffix))
        return names[0] if names else None
    image = first(TYPE_IMAGE) or first(TYPE_COMPRESSED)
    if image is None:
        raise ReplayInputError(f'{bag}: no camera images recorded (record with recorder.record_images:=true)')
    return ReplaySource(image_topic=image, joint_topic=first(TYPE_JOINT_STATE),
                        instruction_topic=first(TYPE_STRING, 'instruction'), status_topic=first(TYPE_STATUS),
                        num_frames=int(topics[image]['count']))


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def decode_image(msgtype: str, msg, depth_max_m: float = 3.0) -> np.ndarray:
    if msgtype == TYPE_COMPRESSED:
        return decompress_to_rgb(msg.format, msg.data)
    return image_msg_to_rgb(msg, depth_max_m)


def iter_frames(bag, source: Optional[ReplaySource] = None, progress: bool = False,
                depth_max_m: float = 3.0) -> Iterator[ReplayFrame]:
    source = source or find_inputs(bag)
    topics = [t for t in (source.image_topic, source.joint_topic, source.instruction_topic, source.status_topic) if t]
    names: List[str] = []
    positions: Optional[np.ndarray] = None
    instruction, episode, index = '', -1, 0
    for topic, msgtype, log_ns, msg in read_bag(bag, topics=topics, progress=progress, desc='replay'):
        if topic == source.joint_topic:
            if len(msg.name) == len(msg.position):
                names, positions = list(msg.name), np.asarray(msg.position, dtype=np.float64)
        elif topic == source.instruction_topic:
            instruction = str(msg.data)
        elif topic == source.status_topic:
            episode = int(msg.episode)
            instruction = str(msg.instruction) or instruction
        elif topic == source.image_topic:
            yield ReplayFrame(index=index, log_ns=log_ns, stamp_ns=_stamp_ns(msg.header),
                              frame_id=str(msg.header.frame_id), rgb=decode_image(msgtype, msg, depth_max_m),
                              joint_names=names, joint_positions=positions, instruction=instruction,
                              episode=episode)
            index += 1
