"""The four vision tasks: parity with the transformers pipelines on tiny models the tests build,
int8's gate per task, and real servers on 127.0.0.1 answering `InferenceClient`, raw image bodies,
base64 JSON and curl the way the transformers pipeline answers the same image.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from huggingface_hub import InferenceClient
from PIL import Image

import runtime
from compile import CompileOptions, Precision, Progress, ValidationFailed, compile_model
from tests.conftest import Lazy, Server
from tests.support.vision import VISION_ARCHS, sample_image

SERVED = dict(VISION_ARCHS)  # kiln serves every tiny architecture; each task's first is the one its server runs
CASES = [(task, arch) for task, archs in SERVED.items() for arch in archs]
PARAMETERS: dict[str, dict[str, Any]] = {
    "image-classification": {"top_k": 3},
    "zero-shot-image-classification": {"candidate_labels": ["cat", "dog", "car"]},
    "object-detection": {"threshold": 0.3},
    "image-segmentation": {},
}
SIZES = [(80, 60), (64, 96), (120, 120)]


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def transformers_pipeline(task: str, model: Path) -> Any:
    import transformers

    return transformers.pipeline(task, model=str(model))


def assert_same(task: str, ours: Any, theirs: Any) -> None:
    """Labels and order equal, scores within 1e-4, boxes within 1 px, masks >= 99.9% the same."""
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a["label"] == b["label"]
        if task == "image-segmentation":
            assert a["mask"].mode == "L" and a["mask"].size == b["mask"].size
            agreement = (np.array(a["mask"]) == np.array(b["mask"])).mean()
            assert agreement >= 0.999 and (a["score"] is None) == (b["score"] is None)
            if b["score"] is not None:
                assert a["score"] == pytest.approx(b["score"], abs=1e-4)
            continue
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        if task == "object-detection":
            assert all(abs(a["box"][k] - b["box"][k]) <= 1 for k in ("xmin", "ymin", "xmax", "ymax"))


@pytest.mark.parametrize(("task", "arch"), CASES)
def test_fp32_matches_the_transformers_pipeline(
    task: str, arch: str, tiny_models: Lazy[tuple[str, str], Path], artifacts: Lazy[tuple[str, str], Path]
) -> None:
    pipe = runtime.load(artifacts[task, arch])
    reference = transformers_pipeline(task, tiny_models[task, arch])
    assert pipe.input_kind is runtime.InputKind.IMAGE
    images = [sample_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]
    for image in images:
        assert_same(task, pipe(image, **PARAMETERS[task]), reference(image, **PARAMETERS[task]))
    # a list of encoded images answers a list, each as alone
    batch = pipe([png(image) for image in images], **PARAMETERS[task])
    for image, ours in zip(images, batch):
        assert_same(task, ours, reference(image, **PARAMETERS[task]))


INT8_HOLDS = {
    ("image-classification", arch) for arch in ("vit", "convnext", "resnet", "efficientnet", "mobilenet_v2")
} | {("zero-shot-image-classification", "siglip")}


@pytest.mark.parametrize(("task", "arch"), CASES)
def test_int8_holds_its_gate_or_is_refused_with_the_figures(
    task: str, arch: str, tiny_models: Lazy[tuple[str, str], Path], tmp_path: Path
) -> None:
    """On these tiny random models int8 holds for the classifiers and SigLIP; CLIP loses a top
    label, and detection and segmentation move their per-query and per-pixel answers too far."""
    options = CompileOptions(precision=Precision.INT8)
    if (task, arch) not in INT8_HOLDS:
        with pytest.raises(ValidationFailed, match="int8-none: FAILED gate"):
            compile_model(tiny_models[task, arch], tmp_path / "int8", options, Progress(quiet=True))
        return
    result = compile_model(tiny_models[task, arch], tmp_path / "int8", options, Progress(quiet=True))
    assert result.manifest.precision == "int8" and result.manifest.validation.min_cosine >= 0.99
    assert result.manifest.validation.label_agreement == 1.0
    pipe, reference = runtime.load(result.directory), transformers_pipeline(task, tiny_models[task, arch])
    for i, (w, h) in enumerate(SIZES):  # beyond the validation images: scores close, labels on clear margins
        image = sample_image(w, h, seed=10 + i)
        ours, theirs = pipe(image, **PARAMETERS[task]), reference(image, **PARAMETERS[task])
        a = np.array([s["score"] for s in sorted(ours, key=lambda r: r["label"])])
        b = np.array([s["score"] for s in sorted(theirs, key=lambda r: r["label"])])
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) >= 0.99
        if theirs[0]["score"] - theirs[1]["score"] > 0.01:
            assert ours[0]["label"] == theirs[0]["label"]


ALL_SUBTASKS = ("panoptic", "instance", "semantic")
SUBTASKS = {"segformer": ("semantic",), "detr": ALL_SUBTASKS, "maskformer": ALL_SUBTASKS}  # what each processor offers


@pytest.mark.parametrize("arch", VISION_ARCHS["image-segmentation"])
def test_segmentation_subtasks_match_the_transformers_pipeline(
    arch: str, tiny_models: Lazy[tuple[str, str], Path], artifacts: Lazy[tuple[str, str], Path]
) -> None:
    """Each subtask the model's processor offers, at the pipeline's thresholds and looser ones (the
    tiny models' queries are rarely 90% sure), equals the transformers pipeline's answer; the
    others are refused, as transformers refuses them."""
    task = "image-segmentation"
    pipe = runtime.load(artifacts[task, arch])
    reference = transformers_pipeline(task, tiny_models[task, arch])
    found = dict.fromkeys(SUBTASKS[arch], 0)
    for subtask in SUBTASKS[arch]:
        for params in (
            {},
            {"threshold": 0.5},
            {"threshold": 0.3, "mask_threshold": 0.4, "overlap_mask_area_threshold": 0.8},
        ):
            for i, (w, h) in enumerate(SIZES):
                image = sample_image(w, h, seed=20 + i)
                theirs = reference(image, subtask=subtask, **params)
                assert_same(task, pipe(image, subtask=subtask, **params), theirs)
                found[subtask] += len(theirs)
    assert all(found.values()), f"a subtask found no segment, so its test proves nothing: {found}"
    image = sample_image()
    for subtask in sorted({*ALL_SUBTASKS, "everything"} - set(SUBTASKS[arch])):
        with pytest.raises(runtime.Unprocessable, match=f"'{subtask}' is not one this model does; it does: "):
            pipe(image, subtask=subtask)
        with pytest.raises(ValueError, match=f"Subtask {subtask} is not supported"):
            reference(image, subtask=subtask)


def test_masks_are_cut_to_the_image_where_the_processor_pads_beyond_it(
    tiny_models: Lazy[tuple[str, str], Path], artifacts: Lazy[tuple[str, str], Path], tmp_path: Path
) -> None:
    """With a `pad_size`, an image fills the top-left of the input, and its masks are cut to that
    part before they are resized (the transformers pipeline resizes the whole padded mask onto the
    image). Reference: the processor's own post-processing of PyTorch's masks, cut the same way."""
    import torch
    import transformers

    task, arch = "image-segmentation", "maskformer"
    directory = tmp_path / "padded"
    shutil.copytree(artifacts[task, arch], directory)
    config = json.loads((directory / "preprocessor_config.json").read_text())
    config["pad_size"] = {"height": 128, "width": 128}
    (directory / "preprocessor_config.json").write_text(json.dumps(config))
    pipe = runtime.load(directory)
    processor = transformers.AutoImageProcessor.from_pretrained(directory)  # type: ignore[no-untyped-call]
    model = transformers.AutoModelForInstanceSegmentation.from_pretrained(tiny_models[task, arch]).eval()
    found = 0
    for i, (w, h) in enumerate(SIZES):
        image = sample_image(w, h, seed=30 + i)
        inputs = processor(images=[image], return_tensors="pt")
        filled = inputs["pixel_mask"][0].bool()  # the image's part of the 128 x 128 input
        height, width = int(filled.any(1).sum()), int(filled.any(0).sum())
        assert inputs["pixel_values"].shape[-2:] == (128, 128) and (height, width) != (128, 128)
        with torch.no_grad():
            outputs = model(pixel_values=inputs["pixel_values"])
        masks = outputs.masks_queries_logits  # a quarter of the input's size
        outputs.masks_queries_logits = masks[
            :, :, : round(masks.shape[2] * height / 128), : round(masks.shape[3] * width / 128)
        ]
        want = processor.post_process_panoptic_segmentation(
            outputs, threshold=0.5, overlap_mask_area_threshold=0.5, target_sizes=[(h, w)]
        )[0]  # the pipeline's overlap threshold, not the processor's 0.8
        got = pipe(image, threshold=0.5)
        assert [g["label"] for g in got] == [model.config.id2label[s["label_id"]] for s in want["segments_info"]]
        for g, segment in zip(got, want["segments_info"]):
            assert g["score"] == pytest.approx(segment["score"], abs=1e-4)
            mask = (want["segmentation"] == segment["id"]).numpy() * 255
            assert (np.array(g["mask"]) == mask).mean() >= 0.999
        found += len(got)
    assert found, "no segment found, so the test proves nothing"


@pytest.mark.parametrize("classes", [4, 80])
def test_instance_order_is_torch_topk_unsorted(classes: int) -> None:
    """MaskFormer's instances come in the order of torch's `topk(sorted=False)` over queries x
    classes: libstdc++'s nth_element below 64 classes (and its heap fallback), partial_sort from
    64. The port gives the same indices, ties included."""
    import torch

    from runtime.tasks.image_segmentation import topk_unsorted

    rng = np.random.default_rng(classes)
    cases = [rng.random(int(q) * classes).astype(np.float32) for q in rng.integers(1, 60, 150)]
    cases += [np.round(values, 1) for values in cases[:50]]
    tops = [max(1, len(values) // classes) for values in cases]
    for n in (40, 100, 500):  # Musser's median-of-3 killer: introselect runs out of depth and heap-selects
        killer = np.zeros(n, dtype=np.float32)
        killer[0 : n // 2 : 2], killer[1 : n // 2 : 2] = np.arange(1, n // 2, 2), n // 2 + np.arange(1, n // 2, 2)
        killer[n // 2 :] = 2 * np.arange(1, n // 2 + 1)
        cases += [killer, -killer]
        tops += [n // 3, n // 3]
    for values, k in zip(cases, tops):
        want = torch.from_numpy(values).topk(k, sorted=False).indices.numpy()
        assert topk_unsorted(values, k).tolist() == want.tolist()


def test_auto_compile_says_why_it_keeps_fp32(tiny_models: Lazy[tuple[str, str], Path], tmp_path: Path) -> None:
    result = compile_model(
        tiny_models["object-detection", "detr"], tmp_path / "auto", CompileOptions(), Progress(quiet=True)
    )
    assert result.manifest.precision == "fp32"
    assert any(line.startswith("int8-none: FAILED gate") for line in result.report)


@pytest.mark.parametrize("task", list(SERVED))
def test_inference_client_raw_bytes_and_base64_json(
    task: str, servers: Lazy[str, Server], tiny_models: Lazy[tuple[str, str], Path], tmp_path: Path
) -> None:
    server = servers[task]
    reference = transformers_pipeline(task, tiny_models[task, SERVED[task][0]])
    image = sample_image(90, 70, seed=7)
    data = png(image)
    client = InferenceClient(model=server.url)
    method = getattr(client, task.replace("-", "_"))
    params = PARAMETERS[task]
    if task != "zero-shot-image-classification":  # the client always sends JSON for zero-shot
        got = method(data)  # raw bytes, no Content-Type: what the client sends without parameters
        want = reference(image)
        assert [e.label for e in got] == [w["label"] for w in want]
    got = method(data, **params)  # JSON with base64 `inputs`: what it sends with parameters
    want = reference(image, **params)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.label == w["label"]
        if task == "image-segmentation":
            assert (np.array(g.mask) == np.array(w["mask"])).mean() >= 0.999
        else:
            assert g.score == pytest.approx(w["score"], abs=1e-4)
        if task == "object-detection":
            assert abs(g.box.xmin - w["box"]["xmin"]) <= 1 and abs(g.box.ymax - w["box"]["ymax"]) <= 1
    # a data URL works as well as plain base64
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    answer = httpx.post(server.url, json={"inputs": url, "parameters": params}, timeout=60)
    assert answer.status_code == 200 and [r["label"] for r in answer.json()] == [w["label"] for w in want]


def test_raw_image_bodies_with_query_parameters_and_curl(servers: Lazy[str, Server], tmp_path: Path) -> None:
    server = servers["image-classification"]
    image = sample_image(100, 80, seed=3)
    pipe_answer = None
    for media in ("image/png", "IMAGE/PNG; charset=binary", "application/octet-stream"):
        answer = httpx.post(f"{server.url}/?top_k=2", content=png(image), headers={"content-type": media})
        assert answer.status_code == 200 and len(answer.json()) == 2, answer.text
        pipe_answer = pipe_answer or answer.json()
        assert answer.json() == pipe_answer
    jpeg = io.BytesIO()
    image.save(jpeg, format="JPEG")
    (tmp_path / "cat.jpg").write_bytes(jpeg.getvalue())
    if shutil.which("curl"):
        out = subprocess.run(
            ["curl", "-s", "--data-binary", f"@{tmp_path / 'cat.jpg'}", "-H", "content-type: image/jpeg", server.url],
            capture_output=True, check=True, timeout=30,
        )  # fmt: skip
        assert [r["label"] for r in httpx.Response(200, content=out.stdout).json()]


def test_image_errors_are_clear(servers: Lazy[str, Server], tmp_path: Path) -> None:
    server = servers["image-classification"]
    bad = httpx.post(server.url, content=b"not an image at all", headers={"content-type": "image/png"})
    assert bad.status_code == 400 and "could not be decoded" in bad.json()["error"]
    garbage = httpx.post(server.url, json={"inputs": "%%%not-base64%%%"})
    assert garbage.status_code == 400 and "base64" in garbage.json()["error"]
    wrong = httpx.post(server.url, content=b"RIFF....WAVE", headers={"content-type": "audio/wav"})
    assert wrong.status_code == 415
    unknown = httpx.post(
        f"{server.url}/?colour=blue", content=png(sample_image()), headers={"content-type": "image/png"}
    )
    assert unknown.status_code == 400 and "colour" in unknown.json()["error"]
    # a decompression bomb: the header says 50000 x 50000; refused before any pixel is decoded
    bomb = io.BytesIO()
    Image.new("1", (50000, 50000)).save(bomb, format="PNG")
    answer = httpx.post(server.url, content=bomb.getvalue(), headers={"content-type": "image/png"}, timeout=30)
    assert answer.status_code == 422 and "pixels" in answer.json()["error"]
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_exif_orientation_is_applied(servers: Lazy[str, Server], tiny_models: Lazy[tuple[str, str], Path]) -> None:
    """A JPEG whose EXIF says "rotate": the answer is the transformers pipeline's on the same file."""
    server = servers["image-classification"]
    image = sample_image(120, 40, seed=5)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = io.BytesIO()
    image.save(data, format="JPEG", exif=exif.tobytes(), quality=95)
    from transformers.image_utils import load_image

    reference = transformers_pipeline("image-classification", tiny_models["image-classification", "vit"])
    want = reference(load_image(Image.open(io.BytesIO(data.getvalue()))), top_k=3)
    got = httpx.post(f"{server.url}/?top_k=3", content=data.getvalue(), headers={"content-type": "image/jpeg"}).json()
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], abs=1e-4)


def test_vit_attention_is_fused_on_cpu(artifacts: Lazy[tuple[str, str], Path]) -> None:
    """The SDPA export's scaling is rewritten so that ONNX Runtime fuses ViT's attention, and the
    layer norms stay unfused (the fused fp32 SkipLayerNormalization is slower on CPU); the parity
    tests above hold for this graph."""
    import onnx

    graph = onnx.load(str(artifacts["image-classification", "vit"] / "model.onnx"), load_external_data=False)
    ops = {node.op_type for node in graph.graph.node}
    assert "Attention" in ops and "Softmax" not in ops
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops
