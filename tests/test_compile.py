"""`kiln compile`: exit codes, the manifest, validation as a hard gate, no-op re-runs, atomic output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import compile.build
from compile import CompileOptions, Precision, Progress, TaskUnknown, ValidationFailed, compile_model, infer_task
from kiln.cli import main
from runtime.artifact import read_manifest, sha256, verify_files
from tests.conftest import KILN, ROOT, offline_env
from tests.support.models import ARCHS


def kiln(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KILN, *args], cwd=ROOT, env=offline_env(), capture_output=True, text=True, timeout=300)


def test_cli_compiles_a_validated_artifact_and_rerun_is_a_no_op(tiny_models: dict, tmp_path: Path) -> None:
    out = tmp_path / "sst"
    first = kiln("compile", str(tiny_models["text-classification", "bert"]), "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert "exporting" in first.stderr and "chose" in first.stderr  # progress on stderr
    manifest = read_manifest(out)
    assert manifest.task == "text-classification" and manifest.source.local
    assert manifest.validation.passed and manifest.validation.inputs > 4
    assert manifest.opset >= 11 and {"onnxruntime", "optimum", "transformers", "torch"} <= set(manifest.versions)
    assert set(manifest.files) == {
        "model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "config.json",
    }
    assert all(sha256(out / name) == digest for name, digest in manifest.files.items())
    written = (out / "manifest.json").stat().st_mtime_ns

    again = kiln("compile", str(tiny_models["text-classification", "bert"]), "--out", str(out))
    assert again.returncode == 0 and "up to date" in again.stderr and "exporting" not in again.stderr
    assert (out / "manifest.json").stat().st_mtime_ns == written


def test_changed_files_or_options_rebuild(tiny_models: dict, tmp_path: Path) -> None:
    out = tmp_path / "fe"
    model = tiny_models["feature-extraction", "bert"]
    compile_model(model, out, CompileOptions(), Progress(quiet=True))
    (out / "model.onnx").write_bytes(b"corrupt")
    assert verify_files(out, read_manifest(out)) == ["model.onnx"]
    rebuilt = compile_model(model, out, CompileOptions(), Progress(quiet=True))
    assert not rebuilt.skipped and not verify_files(out, read_manifest(out))
    fp32 = compile_model(model, out, CompileOptions(precision=Precision.FP32), Progress(quiet=True))
    assert not fp32.skipped and fp32.manifest.precision == "fp32"


def test_the_same_inputs_give_the_same_artifact_under_any_load(tiny_models: dict, tmp_path: Path) -> None:
    """The choice follows a fixed order, not timings: a compile on a busy machine keeps the same
    candidate and writes the same graph, byte for byte."""
    model = tiny_models["sentence-embeddings", "bert"]
    quiet = compile_model(model, tmp_path / "quiet", CompileOptions(), Progress(quiet=True)).manifest
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        busy = compile_model(model, tmp_path / "busy", CompileOptions(), Progress(quiet=True)).manifest
    finally:
        for burner in burners:
            burner.kill()
    assert (quiet.precision, quiet.optimization) == (busy.precision, busy.optimization)
    assert quiet.files["model.onnx"] == busy.files["model.onnx"]
    assert quiet.choice["order"] == ["int8-none", "fp32-O2", "fp32-none"] and quiet.choice["rule"]


def test_the_same_model_installed_elsewhere_is_up_to_date(tiny_models: dict, tmp_path: Path) -> None:
    """The artifact is keyed by the model's content, not its path or file times."""
    model = tiny_models["text-classification", "roberta"]
    out = tmp_path / "tc"
    first = compile_model(model, out, CompileOptions(precision=Precision.FP32), Progress(quiet=True))
    elsewhere = shutil.copytree(model, tmp_path / "another-clone" / "model")
    again = compile_model(elsewhere, out, CompileOptions(precision=Precision.FP32), Progress(quiet=True))
    assert again.skipped and again.manifest.source.content == first.manifest.source.content


def test_tolerance_failure_fails_with_exit_3_and_writes_nothing(
    tiny_models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(compile.validate, "FP32_MAX_ABS", 0.0)
    out = tmp_path / "strict"
    code = main(["compile", str(tiny_models["fill-mask", "bert"]), "--out", str(out), "--precision", "fp32"])
    err = capsys.readouterr().err
    assert code == 3
    assert "FAILED gate (max abs diff <= 0)" in err and "max abs diff" in err
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_failed_rebuild_keeps_the_previous_artifact(
    tiny_models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "qa"
    model = tiny_models["question-answering", "bert"]
    compile_model(model, out, CompileOptions(), Progress(quiet=True))
    before = read_manifest(out)
    monkeypatch.setattr(compile.validate, "FP32_MAX_ABS", 0.0)
    with pytest.raises(ValidationFailed):
        compile_model(model, out, CompileOptions(precision=Precision.FP32), Progress(quiet=True))
    assert read_manifest(out) == before and not verify_files(out, before)


def test_interrupted_compile_leaves_no_complete_looking_directory(
    tiny_models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(compile.build, "quantize_int8", interrupted)
    out = tmp_path / "ner"
    with pytest.raises(KeyboardInterrupt):
        compile_model(tiny_models["token-classification", "bert"], out, CompileOptions(), Progress(quiet=True))
    assert not out.exists() and not list(tmp_path.iterdir())


def test_unknown_task_exits_2_and_lists_the_choices(tiny_models: dict, tmp_path: Path) -> None:
    result = kiln("compile", str(tiny_models["fill-mask", "bert"]), "--out", str(tmp_path / "x"), "--task", "telepathy")
    assert result.returncode == 2
    assert "telepathy" in result.stderr and "question-answering" in result.stderr and "fill-mask" in result.stderr


def test_task_inference(tiny_models: dict, tmp_path: Path) -> None:
    for task, archs in ARCHS.items():
        for arch in archs:
            assert infer_task(tiny_models[task, arch]) == task  # the card's pipeline_tag
    model = tmp_path / "nli"
    model.mkdir()
    labels = {"contradiction": 0, "neutral": 1, "entailment": 2}
    (model / "config.json").write_text(
        json.dumps({"architectures": ["BertForSequenceClassification"], "label2id": labels})
    )
    assert infer_task(model) == "zero-shot-classification"
    (model / "config.json").write_text(json.dumps({"architectures": ["RobertaForTokenClassification"]}))
    assert infer_task(model) == "token-classification"
    (model / "config.json").write_text(json.dumps({"architectures": ["SomethingElse"]}))
    with pytest.raises(TaskUnknown, match=r"pass --task, one of: .*feature-extraction"):
        infer_task(model)


def test_missing_model_is_a_readable_failure(tmp_path: Path) -> None:
    result = kiln("compile", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "no such model directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_explains_every_flag_with_an_example() -> None:
    result = kiln("compile", "--help")
    assert result.returncode == 0
    for flag in (
        "--out",
        "--task",
        "--device",
        "--precision",
        "--optimize",
        "--revision",
        "--force",
        "examples:",
        "exit status",
    ):
        assert flag in result.stdout


def test_a_task_the_architecture_cannot_do_is_a_readable_failure(tiny_models: dict, tmp_path: Path) -> None:
    model = str(tiny_models["fill-mask", "bert"])
    result = kiln("compile", model, "--out", str(tmp_path / "x"), "--task", "text-generation")
    assert result.returncode == 1 and "optimum cannot export" in result.stderr and "Traceback" not in result.stderr
