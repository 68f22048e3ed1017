"""Planner (slow system) configuration."""
from dataclasses import dataclass

from vla_ros.config.base import ConfigError, param

PLANNER_TYPES = ('lightweight', 'vlm')
PLAN_TOKEN_SOURCES = ('action_queries', 'last_positions')
FAST_PREFILL_MODES = ('auto', 'on', 'off')


@dataclass
class PlannerConfig:
    type: str = param('lightweight', 'Planner implementation; switch at runtime with a parameter set '
                      '(the new planner loads in the background, the old one keeps serving)',
                      choices=PLANNER_TYPES)
    model_path: str = param('package://vla_ros/models/vlm_idefics3',
                            'Directory of a transformers VLM checkpoint for planner.type=vlm: a path or a '
                            'package://<pkg>/<path> URI (default: the tiny demo VLM)')
    device: str = param('cpu', 'torch device for the planner', choices=('cpu', 'cuda'))
    torch_threads: int = param(1, 'torch CPU threads for the planner (0 = leave torch default)', range=(0, 256))
    rate_hz: float = param(2.0, 'How often the planner is asked for a plan', range=(0.01, 100.0))
    num_plan_tokens: int = param(8, 'Latent plan tokens exported per plan', range=(1, 4096))
    plan_token_dim: int = param(64, 'Dimension of exported plan tokens (projected)', range=(1, 65536))
    max_new_tokens: int = param(16, 'Max generated tokens for the sub-task text', range=(1, 4096))
    plan_token_source: str = param('action_queries', 'VLM plan tokens: hidden states at appended action-query '
                                   'positions, or at the last prompt positions', choices=PLAN_TOKEN_SOURCES)
    plan_layer: int = param(-1, 'VLM hidden-state layer the plan tokens are read from (negative = from the end)',
                            range=(-1000, 1000))
    max_visual_tokens: int = param(64, 'Perception tokens injected into the VLM (pooled down to this many)',
                                   range=(1, 100000))
    prompt: str = param('Instruction: {instruction} . Next subtask :',
                        'VLM prompt; {instruction} is replaced, perception tokens go in front of it')
    drop_final_layers: int = param(0, 'VLM: run only the first L - N decoder layers of its language model '
                                      '(SmolVLA-style; halves the prefill at N = L/2, needs a policy trained '
                                      'that way: see the drift in bench/RESULTS.md)', range=(0, 1000))
    quantize: str = param('none', 'VLM language-model linears: none, or fp8 weights + per-token fp8 '
                                  'activations (Hopper/Ada GPUs; exact but slow dequantising path elsewhere)',
                          choices=('none', 'fp8'))
    fast_prefill: str = param('auto', "VLM planner: 'on' = prompt prefill, plan decode and action-query states "
                                      "through our own decoder forward with a per-slot KV cache (SlotKVPrefill: "
                                      "CUDA graphs per token bucket, keys/values of unchanged visual tokens kept "
                                      "across plans); 'auto' = on for device cuda, off on cpu; 'off' = transformers "
                                      "generate + forward. Checked against transformers at load (one probe "
                                      "prompt): families or settings it does not reproduce fall back, logged",
                              choices=FAST_PREFILL_MODES)
    kv_reuse: bool = param(False, 'fast_prefill: recompute only the visual tokens that changed since the last plan '
                                  '(VLA-Cache-style: an unchanged token keeps keys/values computed with the '
                                  'earlier tokens of the plan that last computed it, so close to, not equal to, '
                                  'a full prefill, and the drift grows while the scene keeps changing: see '
                                  'bench/results/vlm_fast_cpu.json); off = the same plans as transformers')
    kv_refresh_interval: int = param(10, 'kv_reuse: each plan also recomputes the perception tokens p with '
                                         'p % N == plan % N, so none keeps keys/values older than N plans '
                                         '(0 = only the changed ones)', range=(0, 100000))
    compile_layers: bool = param(False, 'fast_prefill: torch.compile the per-layer pointwise work (inductor) '
                                        'inside the graphs; meant for cuda, eager fallback logged')
    seed: int = param(0, 'Seed of the fixed projections (plan tokens must be reproducible)', range=(0, 2**31 - 1))
    cache_enabled: bool = param(True, 'Reuse the last plan while instruction and scene are unchanged')
    cache_similarity: float = param(0.95, 'Scene-embedding cosine similarity needed for a cache hit',
                                    range=(0.0, 1.0))
    cache_timeout_s: float = param(5.0, 'A cached plan older than this is refreshed', range=(0.0, 3600.0))
    max_input_age_s: float = param(2.0, 'Drop perception tokens older than this (0 = no age check)',
                                   range=(0.0, 3600.0))
    default_instruction: str = param('touch the red cube',
                                     'Instruction used until one arrives on the instruction topic')
    max_instruction_chars: int = param(1000, 'Longer instructions are dropped (counted); the previous one stays',
                                       range=(1, 10000000))
    max_token_abs: float = param(1e4, 'Perception tokens with any |value| above this are dropped',
                                 range=(0.0, 1e30))

    def validate(self):
        if '{instruction}' not in self.prompt:
            raise ConfigError('planner.prompt must contain {instruction}')
