"""Tiny random-weight VLM checkpoints (model + processor + tokenizer) built locally, no model hub.

They exist so the VLM planner's real loading path (AutoProcessor + AutoModelForImageTextToText
from a directory) can run in tests, benches and the CPU demo. Weights are random and seeded, so
generated text is gibberish but deterministic; swap `planner.model_path` to a real SmolVLM /
Qwen2-VL checkpoint directory for meaningful plans.
"""
from __future__ import annotations

import os
from typing import Dict, List

VLM_FAMILIES = ('idefics3', 'paligemma', 'qwen2_vl')

# Word-level vocabulary: enough for the demo instructions and prompts to tokenize without [UNK].
_WORDS = """
touch reach grasp pick place push move go to the a an on onto in into of and then above below near
left right front behind top bottom up down red green blue yellow orange purple white black cube
block box target object ball cylinder arm gripper robot table scene task plan subtask next step
descend lift lower raise open close hold release stop done you are planner for manipulation
instruction current state given what is with it this that please now first second
""".split()
_PUNCT = list('.,:;!?\'"-()/')
_BASE_SPECIALS = ['<unk>', '<pad>', '<s>', '</s>']
_FAMILY_SPECIALS: Dict[str, List[str]] = {
    # Idefics3Processor adds <fake_token_around_image>, <image>, <global-img> itself when missing,
    # but having them in the base vocab keeps ids below vocab_size.
    'idefics3': ['<fake_token_around_image>', '<image>', '<global-img>', '<end_of_utterance>']
                + [f'<row_{i}_col_{j}>' for i in range(1, 7) for j in range(1, 7)],
    'paligemma': [],
    'qwen2_vl': ['<|im_start|>', '<|im_end|>', '<|vision_start|>', '<|vision_end|>', '<|image_pad|>',
                 '<|video_pad|>', '<|endoftext|>'],
}


def _build_tokenizer(family: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = _BASE_SPECIALS + _FAMILY_SPECIALS[family]
    vocab = {tok: i for i, tok in enumerate(specials + _WORDS + _PUNCT)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token='<unk>'))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix='##')  # joins word-level tokens with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token='<unk>', pad_token='<pad>',
                                  bos_token='<s>', eos_token='</s>')
    tok.add_special_tokens({'additional_special_tokens': _FAMILY_SPECIALS[family]})
    return tok


def _tiny_text_config(vocab_size: int, tok, hidden: int, layers: int) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=512, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, tie_word_embeddings=False)


def _build_idefics3(tok, hidden: int, layers: int):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    image_size, patch, scale = 32, 8, 2
    image_seq_len = ((image_size // patch) ** 2) // (scale ** 2)
    image_processor = Idefics3ImageProcessorPil(size={'longest_edge': image_size},
                                                max_image_size={'longest_edge': image_size}, do_image_splitting=False)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=image_seq_len)
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=patch),
        text_config=_tiny_text_config(len(tok), tok, hidden, layers),
        scale_factor=scale, image_token_id=tok.convert_tokens_to_ids('<image>'), pad_token_id=tok.pad_token_id)
    return Idefics3ForConditionalGeneration(config), processor


def _build_qwen2_vl(tok, hidden: int, layers: int):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14,
                                               merge_size=2, temporal_patch_size=2)
    try:
        processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tok)
    except (AttributeError, ImportError, ValueError):
        # Qwen2VLProcessor insists on a video processor, which needs torchvision; the planner only
        # needs the tokenizer (it feeds perception tokens, not pixels), so save that alone.
        processor = tok
    head_dim = hidden // 4
    text = _tiny_text_config(len(tok), tok, hidden, layers)
    # mrope splits head_dim/2 rotary frequencies over (temporal, height, width).
    half = head_dim // 2
    text['rope_parameters'] = {'rope_type': 'default', 'rope_theta': 10000.0,
                               'mrope_section': [half - 2 * (half // 3), half // 3, half // 3]}
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(depth=1, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=tok.convert_tokens_to_ids('<|image_pad|>'),
        video_token_id=tok.convert_tokens_to_ids('<|video_pad|>'),
        vision_start_token_id=tok.convert_tokens_to_ids('<|vision_start|>'),
        vision_end_token_id=tok.convert_tokens_to_ids('<|vision_end|>'))
    return Qwen2VLForConditionalGeneration(config), processor


def _build_paligemma(tok, hidden: int, layers: int):
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    image_size, patch = 28, 14
    image_processor = SiglipImageProcessorPil(size={'height': image_size, 'width': image_size})
    image_processor.image_seq_length = (image_size // patch) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)  # adds <image>, <locXXXX>
    text = _tiny_text_config(len(tok), tok, hidden, layers)
    text['head_dim'] = hidden // 4
    config = PaliGemmaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=patch, vision_use_head=False),
        text_config=text, image_token_index=tok.convert_tokens_to_ids('<image>'), vocab_size=len(tok),
        projection_dim=hidden, hidden_size=hidden, pad_token_id=tok.pad_token_id)
    return PaliGemmaForConditionalGeneration(config), processor


_BUILDERS = {'idefics3': _build_idefics3, 'qwen2_vl': _build_qwen2_vl, 'paligemma': _build_paligemma}


def make_demo_vlm(path: str, family: str = 'idefics3', seed: int = 0, hidden_size: int = 64,
                  num_layers: int = 2) -> str:
    """Save a tiny seeded random-weight VLM of `family` (model + processor) to `path`; return `path`.

    `hidden_size`/`num_layers` let the bench build a larger random model of the same family.
    """
    import torch

    if family not in _BUILDERS:
        raise ValueError(f'unknown VLM family {family!r}; choose from {VLM_FAMILIES}')
    torch.manual_seed(seed)
    tok = _build_tokenizer(family)
    model, processor = _BUILDERS[family](tok, hidden_size, num_layers)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
