"""Create the local demo checkpoints the closed-loop demo runs on.

Their output is committed under models/ and installed as share/vla_ros/models, where the
parameters' package:// defaults point (`vla_make_demo_models --models-dir models` rebuilds it).

The vision encoder is a tiny random-weight SigLIP built from a fixed seed: the
committed action-head checkpoint was trained on exactly its features, so the
seed and sizes here must not change without retraining (checkpoints/README.md).
"""
import argparse
import json
import os

DEFAULT_MODELS_DIR = os.environ.get('VLA_ROS_MODELS', os.path.join(os.getcwd(), 'models'))
VISION_ENCODER_SEED = 0


def ensure_vision_encoder(models_dir: str = DEFAULT_MODELS_DIR) -> str:
    from vla_ros.models.vision import make_demo_vision_encoder
    path = os.path.join(models_dir, 'vision_encoder')
    if not os.path.isfile(os.path.join(path, 'config.json')):
        make_demo_vision_encoder(path, seed=VISION_ENCODER_SEED)
    return path


def ensure_vlm(models_dir: str = DEFAULT_MODELS_DIR, family: str = 'idefics3') -> str:
    from vla_ros.models.vlm import make_demo_vlm
    path = os.path.join(models_dir, f'vlm_{family}')
    if not os.path.isfile(os.path.join(path, 'config.json')):
        make_demo_vlm(path, family=family, seed=0)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models-dir', default=DEFAULT_MODELS_DIR)
    parser.add_argument('--vlm-family', default='idefics3')
    args = parser.parse_args(argv)
    paths = {'vision_encoder': ensure_vision_encoder(args.models_dir),
             'vlm': ensure_vlm(args.models_dir, args.vlm_family)}
    print(json.dumps(paths, indent=2))


if __name__ == '__main__':
    main()
