"""Slow system: planners (lightweight, transformers VLM), plan cache, asynchronous runner."""
from vla_ros.planning.base import PlanOutput, Planner, PlanRequest, make_planner
from vla_ros.planning.plan_cache import PlanCache, scene_embedding
from vla_ros.planning.runner import AsyncPlanner, PlanMeta

__all__ = ['PlanOutput', 'Planner', 'PlanRequest', 'make_planner', 'PlanCache', 'scene_embedding',
           'AsyncPlanner', 'PlanMeta']
