"""Efficient visual front end: SigLIP-style encoder run on pruned tokens with temporal feature reuse.

Modules (import them directly; this package import stays light):
  encoder.VisionEncoder        transformers vision tower, subset forward with cached K/V context
  pruning                      'none' | 'attention_topk' | 'query' | 'spatial_coverage' (+ adaptive budget)
  relevance                    instruction -> patch relevance (colour words, hashed text query)
  reuse.TemporalReuse          per-patch similarity, static-patch reuse, keyframes, reuse ratio
  pipeline.PerceptionPipeline  image -> PerceptionResult (standalone, no ROS)
  device_pipeline              the same on the encoder's device: torch decisions, CUDA graphs per
                               token-count bucket, pinned uploads (make_pipeline picks per config)
  torch_ops, fps_triton        the pruning / reuse decisions as torch ops; Triton farthest-point fill
  image_conversion, sync       sensor_msgs/Image <-> numpy; image/joint-state pairing
"""
