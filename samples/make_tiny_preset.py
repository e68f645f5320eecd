"""Writes a tiny keras-hub preset (random weights, offline) with keras-hub's own constructors and
`save_to_preset`, for trying `featurize run --model hub:FOLDER` and `featurize search --text` without a
download (the README's "Retrieval models"), and for the tests:

    python samples/make_tiny_preset.py tiny-clip/                    # CLIP, with a BPE vocabulary made here
    python samples/make_tiny_preset.py tiny-siglip/ --family siglip  # SigLIP, a SentencePiece model trained here

Families: clip, siglip, dinov2 (with 4 registers), dinov3, vit. Hidden width 32, 2 blocks, 64 px (DINOv2:
56): ~0.3 s to build each. Random weights: the plumbing, not meaningful vectors.
"""
from __future__ import annotations

import argparse
import io
import os
import string

SIZE = 64  # input side of the tiny presets (DINOv2: 56, a multiple of its patch 14)
SENTENCES = ["a red bicycle", "a photo of a cat", "a dog on the grass", "the quick brown fox", "a blue car"]


def _clip(keras_hub):
    vocabulary = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in string.ascii_lowercase:
        vocabulary[letter] = len(vocabulary)
        vocabulary[letter + "</w>"] = len(vocabulary)
    vocabulary["re"], vocabulary["red</w>"] = len(vocabulary), len(vocabulary) + 1
    tokenizer = keras_hub.models.CLIPTokenizer(vocabulary=vocabulary, merges=["r e", "re d</w>"])
    vision = keras_hub.models.CLIPVisionEncoder(patch_size=16, hidden_dim=32, num_layers=2, num_heads=2,
                                               intermediate_dim=64, image_shape=(SIZE, SIZE, 3))
    text = keras_hub.models.CLIPTextEncoder(vocabulary_size=len(vocabulary), embedding_dim=32, hidden_dim=32,
                                           num_layers=2, num_heads=2, intermediate_dim=64, max_sequence_length=16)
    backbone = keras_hub.models.CLIPBackbone(vision, text, projection_dim=24)
    # OpenAI CLIP's mean and std, as keras-hub's CLIP presets hold them.
    std, mean = (0.26862954, 0.26130258, 0.27577711), (0.48145466, 0.4578275, 0.40821073)
    converter = keras_hub.layers.CLIPImageConverter(
        image_size=(SIZE, SIZE), scale=[1 / (255 * s) for s in std], offset=[-m / s for m, s in zip(mean, std)],
        interpolation="bicubic")
    preprocessor = keras_hub.models.CLIPPreprocessor(tokenizer, sequence_length=16)
    return backbone, converter, preprocessor


def _siglip(keras_hub):
    import sentencepiece

    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 20), model_writer=proto, vocab_size=20, model_type="WORD",
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="<pad>", bos_piece="<s>", eos_piece="</s>",
        unk_piece="<unk>", hard_vocab_limit=False, minloglevel=2)
    tokenizer = keras_hub.models.SigLIPTokenizer(proto=proto.getvalue())
    vision = keras_hub.models.SigLIPVisionEncoder(patch_size=16, hidden_dim=32, num_layers=2, num_heads=2,
                                                 intermediate_dim=64, image_shape=(SIZE, SIZE, 3))
    text = keras_hub.models.SigLIPTextEncoder(vocabulary_size=32, embedding_dim=32, hidden_dim=32, num_layers=2,
                                             num_heads=2, intermediate_dim=64, max_sequence_length=16)
    backbone = keras_hub.models.SigLIPBackbone(vision, text)
    converter = keras_hub.layers.SigLIPImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0,
                                                      interpolation="bilinear", crop_to_aspect_ratio=False)
    preprocessor = keras_hub.models.SigLIPPreprocessor(tokenizer, converter, sequence_length=16)
    return backbone, converter, preprocessor


def _dinov2(keras_hub):
    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=14, num_layers=2, hidden_dim=32, num_heads=2, intermediate_dim=64, num_register_tokens=4,
        image_shape=(56, 56, 3), position_embedding_shape=(56, 56, 3))
    converter = keras_hub.layers.DINOV2ImageConverter(
        image_size=(56, 56), scale=[1 / (255 * s) for s in (0.229, 0.224, 0.225)],
        offset=[-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))], interpolation="bicubic",
        antialias=True)
    return backbone, converter, None


def _dinov3(keras_hub):
    backbone = keras_hub.models.DINOV3Backbone(patch_size=16, num_layers=2, hidden_dim=32, num_heads=2,
                                               intermediate_dim=64, image_shape=(SIZE, SIZE, 3))
    return backbone, keras_hub.layers.DINOV3ImageConverter(image_size=(SIZE, SIZE), scale=1 / 255.0), None


def _vit(keras_hub):
    backbone = keras_hub.models.ViTBackbone(image_shape=(SIZE, SIZE, 3), patch_size=16, num_layers=2, num_heads=2,
                                            hidden_dim=32, mlp_dim=64)
    return backbone, keras_hub.layers.ViTImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0), None


BUILDERS = {"clip": _clip, "siglip": _siglip, "dinov2": _dinov2, "dinov3": _dinov3, "vit": _vit}


def save_tiny_preset(family: str, folder: str, seed: int = 0) -> str:
    """Build `family`'s tiny model (random weights, seeded) and write it with keras-hub's save_to_preset."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone, converter, preprocessor = BUILDERS[family](keras_hub)
    os.makedirs(folder, exist_ok=True)
    backbone.save_to_preset(folder)
    converter.save_to_preset(folder)
    if preprocessor is not None:
        preprocessor.save_to_preset(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a tiny keras-hub preset with random weights.")
    parser.add_argument("folder", help="where to write the preset")
    parser.add_argument("--family", default="clip", choices=sorted(BUILDERS))
    args = parser.parse_args()
    try:
        import keras_hub  # noqa: F401 - only to say what is missing before anything is built
    except ImportError as exc:
        raise SystemExit(f"make_tiny_preset.py needs keras_hub: pip install 'featurize[hub]' ({exc})") from None
    save_tiny_preset(args.family, args.folder)
    print(f"wrote a tiny {args.family} preset to {args.folder}")


if __name__ == "__main__":
    main()
