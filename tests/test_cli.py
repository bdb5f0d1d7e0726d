"""`kiln inspect`, `kiln compile --check`, and usage errors: one clear line, exit 2, nothing created."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest

import compile
from kiln.cli import main, shorten
from runtime.artifact import read_manifest, write_manifest
from tests.conftest import KILN, ROOT, offline_env


def kiln(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KILN, *args], cwd=ROOT, env=offline_env(**env), capture_output=True, text=True, timeout=timeout
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def labels(directory: Path) -> int:
    return len(json.loads((directory / "config.json").read_text())["id2label"])


def test_inspect_shows_the_manifest_the_graphs_and_the_files(artifacts: dict) -> None:
    directory = artifacts["text-classification", "bert"]
    manifest = read_manifest(directory)
    result = kiln("inspect", str(directory))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in (
        "text-classification",
        f"{manifest.source.model} (local directory)",
        f"precision     {manifest.precision}",
        f"opset         {manifest.opset}",
        "passed gate (max abs diff <= 0.0001)",
        f"onnxruntime {manifest.versions['onnxruntime']}",
        "input   input_ids       int64[batch_size, sequence_length]",
        "input   attention_mask  int64[batch_size, sequence_length]",
        f"output  logits          float32[batch_size, {labels(directory)}]",
        "model.onnx",
        "tokenizer.json",
        "manifest.json",
    ):
        assert text in out, text
    assert out.strip().splitlines()[-1].startswith("total ")
    assert out.strip().endswith(f"in {len(list(directory.iterdir()))} files")


def test_inspect_json_is_one_object(artifacts: dict) -> None:
    directory = artifacts["text-classification", "bert"]
    manifest = read_manifest(directory)
    result = kiln("inspect", str(directory), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["manifest"] == msgspec.to_builtins(manifest)
    [graph] = data["graphs"]
    assert graph["file"] == "model.onnx" and graph["error"] is None
    assert [p["name"] for p in graph["inputs"]] == manifest.input_names
    assert all(p["dtype"] == "int64" and p["shape"] == ["batch_size", "sequence_length"] for p in graph["inputs"])
    assert graph["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch_size", labels(directory)]}]
    sizes = {p.name: p.stat().st_size for p in directory.iterdir()}
    assert {f["name"]: f["bytes"] for f in data["files"]} == sizes
    assert data["total_bytes"] == sum(sizes.values()) and data["missing"] == []


def test_inspect_of_what_is_not_an_artifact_exits_2(tiny_models: dict, tmp_path: Path) -> None:
    for target in (tiny_models["text-classification", "bert"], tmp_path / "nowhere"):
        result = kiln("inspect", str(target))
        assert result.returncode == 2 and result.stdout == ""
        assert one_line(result).startswith(f"kiln inspect: {target} is not a compiled artifact")


def test_check_passes_on_a_fresh_artifact_and_writes_nothing(artifacts: dict) -> None:
    directory = artifacts["text-classification", "bert"]
    manifest = read_manifest(directory)
    before = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    result = kiln("compile", "--check", str(directory))
    assert result.returncode == 0, result.stdout + result.stderr
    label = f"{manifest.precision}-{manifest.optimization}"
    assert f"{label}: passed gate (max abs diff <= 0.0001) on {manifest.validation.inputs} vectors" in result.stdout
    assert "at compile time: max abs diff" in result.stdout
    assert f"all {len(manifest.files)} files have the manifest's hashes" in result.stdout
    assert result.stdout.strip().endswith("check passed")
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == before


def test_check_fails_with_exit_3_on_another_models_graph(artifacts: dict, tmp_path: Path) -> None:
    copy = tmp_path / "bert"
    shutil.copytree(artifacts["text-classification", "bert"], copy)
    shutil.copy(artifacts["text-classification", "roberta"] / "model.onnx", copy / "model.onnx")
    result = kiln("compile", "--check", str(copy))
    assert result.returncode == 3, result.stdout + result.stderr
    assert ": FAILED gate (max abs diff <= 0.0001)" in result.stdout  # the figures, not only the hashes
    assert "files that differ from the manifest's hashes: model.onnx" in result.stdout
    assert result.stdout.strip().endswith("check FAILED") and "Traceback" not in result.stderr


def test_check_needs_the_source_or_is_given_it(artifacts: dict, tiny_models: dict, tmp_path: Path) -> None:
    copy = tmp_path / "bert"
    shutil.copytree(artifacts["text-classification", "bert"], copy)
    manifest = read_manifest(copy)
    gone = tmp_path / "moved-away"
    write_manifest(
        copy, msgspec.structs.replace(manifest, source=msgspec.structs.replace(manifest.source, model=str(gone)))
    )
    result = kiln("compile", "--check", str(copy))
    assert result.returncode == 2
    assert one_line(result).startswith(f"kiln compile: the source model {gone} (named by the manifest) is not there")

    given = kiln("compile", str(tiny_models["text-classification", "bert"]), "--check", str(copy))
    assert given.returncode == 0 and "check passed" in given.stdout, given.stdout + given.stderr

    not_an_artifact = kiln("compile", "--check", str(tiny_models["text-classification", "bert"]))
    assert not_an_artifact.returncode == 2 and "is not a compiled artifact" in one_line(not_an_artifact)


def test_check_decodes_a_generative_artifact(artifacts: dict) -> None:
    result = kiln("compile", "--check", str(artifacts["text-generation", "llama"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fp32-none: passed gate (same greedy tokens as PyTorch generate" in result.stdout
    assert result.stdout.strip().endswith("check passed")


USAGE_ERRORS = {
    "port above the range": (
        ["serve", "--port", "99999"],
        {},
        "kiln serve: --port 99999 is not a port: use 1 to 65535",
    ),
    "port 0": (["serve", "--port", "0"], {}, "kiln serve: --port 0 is not a port: use 1 to 65535"),
    "negative port": (["serve", "--port", "-1"], {}, "kiln serve: --port -1 is not a port: use 1 to 65535"),
    "PORT from the environment": (["serve"], {"PORT": "99999"}, "kiln serve: PORT=99999 is not a port: use 1 to 65535"),
    "missing model directory": (
        ["compile", "{tmp}/nowhere", "--out", "{out}"],
        {},
        "kiln compile: no such model directory: {tmp}/nowhere",
    ),
    "directory without config.json": (
        ["compile", "{tmp}/empty", "--out", "{out}"],
        {},
        "kiln compile: {tmp}/empty has no config.json: not a transformers model directory",
    ),
    "unknown task": (
        ["compile", "{model}", "--out", "{out}", "--task", "telepathy"],
        {},
        "kiln compile: kiln cannot compile task 'telepathy'; it compiles: audio-classification, ",
    ),
    "--out is a directory that is not an artifact": (
        ["compile", "{model}", "--out", "{model}"],
        {},
        "kiln compile: --out {model} exists and is not a kiln artifact; refusing to overwrite it",
    ),
    "--check with a flag the manifest decides": (
        ["compile", "--check", "{tmp}/empty", "--precision", "int8"],
        {},
        "kiln compile: --check reads --precision from the artifact's manifest; leave it out",
    ),
    "--check of a directory that is not an artifact": (
        ["compile", "--check", "{tmp}/empty"],
        {},
        "kiln compile: {tmp}/empty is not a compiled artifact",
    ),
}


@pytest.mark.parametrize(("args", "env", "line"), USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_usage_errors_exit_2_with_one_line_and_create_nothing(
    args: list[str], env: dict[str, str], line: str, tiny_models: dict, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    model = tiny_models["text-classification", "bert"]

    def fill(text: str) -> str:
        return text.format(tmp=tmp_path, out=tmp_path / "new" / "out", model=model)

    before = sorted(tmp_path.rglob("*")), sorted(model.rglob("*"))
    result = kiln(*map(fill, args), timeout=60, KILN_CACHE=str(tmp_path / "cache"), **env)
    assert result.returncode == 2, result.stderr
    said = one_line(result)
    # one line that says what to do (the longest names the 22 tasks kiln compiles), never a dump
    assert said.startswith(fill(line)) and len(said) < 800 and "Traceback" not in result.stderr
    assert (sorted(tmp_path.rglob("*")), sorted(model.rglob("*"))) == before


def test_a_failed_compile_leaves_no_directory_behind(tiny_models: dict, tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "out"
    result = kiln("compile", str(tiny_models["fill-mask", "bert"]), "--out", str(out), "--task", "text-generation")
    assert result.returncode == 1 and "optimum cannot export" in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_verbose_and_quiet_reach_the_progress(
    tiny_models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[tuple[bool, bool]] = []

    def compile_model(model: object, out: object, options: object, progress: compile.Progress) -> None:
        seen.append((progress.quiet, progress.verbose))

    monkeypatch.setattr(compile, "compile_model", compile_model)
    model = str(tiny_models["text-classification", "bert"])
    assert main(["compile", model, "--out", str(tmp_path / "a"), "--verbose"]) == 0
    assert main(["compile", model, "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["compile", model, "--out", str(tmp_path / "a")]) == 0
    assert seen == [(False, True), (True, False), (False, False)]
    with pytest.raises(SystemExit) as stopped:
        main(["compile", model, "--out", str(tmp_path / "a"), "--quiet", "--verbose"])
    assert stopped.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_help_names_the_new_flags_and_the_exit_statuses() -> None:
    compile_help = kiln("compile", "--help").stdout
    assert "--check DIR" in compile_help and "--verbose" in compile_help and "exit status" in compile_help
    serve_help = kiln("serve", "--help").stdout
    assert "exit status: 0 stopped by a signal after draining" in serve_help and "2 bad usage" in serve_help
    inspect_help = kiln("inspect", "--help").stdout
    assert "--json" in inspect_help and "exit status" in inspect_help


def test_a_library_message_listing_every_model_type_is_cut() -> None:
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the model types)
    from optimum.exporters.tasks import TasksManager

    with pytest.raises(KeyError) as raised:
        TasksManager.get_supported_tasks_for_model_type("no-such-type", "onnx", library_name="transformers")
    message = str(raised.value)
    assert len(message) > 1500
    short = shorten(message)
    assert len(short) < 300 and "no-such-type is not supported yet" in short and " names]" in short
