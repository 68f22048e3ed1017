"""Fast system: flow-matching action head, action chunking with seam smoothing, safety filter."""
from vla_ros.action.chunking import ActionBuffer, Chunk, rtc_soft_weights
from vla_ros.action.controller import ChunkResult, ControlLoop, RateMonitor, TickStatus, build_head
from vla_ros.action.flow_head import FlowHeadConfig, FlowMatchingActionHead
from vla_ros.action.safety import SafetyFilter, SafetyReport

__all__ = ['ActionBuffer', 'Chunk', 'rtc_soft_weights', 'ChunkResult', 'ControlLoop', 'RateMonitor', 'TickStatus',
           'build_head', 'FlowHeadConfig', 'FlowMatchingActionHead', 'SafetyFilter', 'SafetyReport']
