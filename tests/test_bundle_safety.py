"""A bundle is data: loading one runs none of its code, its manifest is strict, and it can be signed.

The attacks here are live: each crafted payload is first shown to run (a marker file appears) when
handed to torch without the runtime's checks, then BundlePolicy must refuse it without running it.
"""

from __future__ import annotations

import io
import json
import pathlib
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch

from svrl_core.export import BundleError, BundlePolicy, export_bundle
from svrl_core.export.bundle import write_manifest

KEY = b"bundle-signing-key-0123"
OBS = (np.zeros((32, 32, 3), np.uint8), np.zeros(2, np.float32), "move to the red disc")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_params, tiny_dataset):
    from svrl_core.policies import new_policy

    directory = tmp_path_factory.mktemp("safety") / "bundle"
    export_bundle(new_policy(tiny_params.policy, tiny_dataset, seed=0), directory, "tiny")
    return directory


@pytest.fixture()
def bundle(exported, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(exported, copy)
    return copy


class Touch:
    """Unpickling this creates `marker`: what a malicious pickle would do with a shell command."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def malicious_pt2(path: pathlib.Path, marker: pathlib.Path) -> None:
    """A torch.export archive whose sample inputs are a pickle that touches `marker` when loaded."""
    program = torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    payload = io.BytesIO()
    torch.save(Touch(marker), payload)  # not weights_only-loadable: torch falls back to full unpickling
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            target.writestr(info.filename,
                            payload.getvalue() if info.filename.endswith("data/sample_inputs/model.pt") else data)


def rewrite_manifest(directory: pathlib.Path, change) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    change(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_a_pickle_in_the_bundle_is_never_unpickled(bundle, tmp_path):
    marker = tmp_path / "pwned"
    malicious_pt2(bundle / "policy.pt2", marker)
    with pytest.raises(Exception):  # the archive is live: plain torch.export.load runs the payload
        torch.export.load(str(bundle / "policy.pt2"))
    assert marker.exists()
    marker.unlink()

    write_manifest(bundle, "tiny")  # checksums recomputed: the manifest matches the tampered bundle
    rewrite_manifest(bundle, lambda m: m.update(format="svrl-bundle-manifest-v1"))  # as an old export wrote it
    with pytest.raises(BundleError, match=r"old svrl-bundle-manifest-v1 bundle .*refuses; re-export it") as refused:
        BundlePolicy(bundle)
    assert "\n" not in str(refused.value) and not marker.exists()

    write_manifest(bundle, "tiny")  # a current manifest listing the archive: the runtime never opens it
    assert "policy.pt2" in json.loads((bundle / "manifest.json").read_text())["files"]
    BundlePolicy(bundle).act(*OBS)
    assert not marker.exists()


def test_loading_calls_no_unpickler(bundle, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a bundle load unpickled something")

    for module, name in [(torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")]:
        monkeypatch.setattr(module, name, refuse)
    assert BundlePolicy(bundle).act(*OBS).shape == (4, 2)


def edit_program(directory: pathlib.Path, change) -> None:
    program = json.loads((directory / "policy.json").read_text())
    change(program)
    (directory / "policy.json").write_text(json.dumps(program))
    write_manifest(directory, "tiny")


def touch_code(marker: pathlib.Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def sympify_eval(program: dict, marker) -> None:  # symbolic sizes go through sympy.sympify, i.e. eval
    value = next(iter(program["graph_module"]["graph"]["sym_int_values"].values()))
    value["as_expr"]["expr_str"] = f"({touch_code(marker)}) or {value['as_expr']['expr_str']}"


def pytree_import(program: dict, marker) -> None:  # pytree contexts import the module an enum names
    module = marker.parent / f"evil_{marker.name}.py"
    module.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nimport enum\n"
                      f"class E(enum.Enum):\n    A = 1\n")
    signature = program["graph_module"]["module_call_graph"][0]["signature"]
    spec = json.loads(signature["in_spec"])
    spec[1]["children_spec"][1]["context"] = json.dumps([{"__enum__": True, "fqn": f"{module.stem}:E", "name": "A"}])
    signature["in_spec"] = json.dumps(spec)


@pytest.mark.parametrize("attack, reason", [
    (sympify_eval, r"shape expression .* names '__import__', which is not a sympy constructor"),
    (pytree_import, r"pytree spec .* context other than a list of keys"),
])
def test_code_in_the_program_json_is_refused_before_torch_runs_it(bundle, tmp_path, monkeypatch, attack, reason):
    from svrl_core.export import runtime

    marker = tmp_path / "pwned"
    monkeypatch.syspath_prepend(str(tmp_path))
    edit_program(bundle, lambda program: attack(program, marker))
    with monkeypatch.context() as unchecked:  # the payload is live: without check_program, torch runs it
        unchecked.setattr(runtime, "check_program", lambda program: None)
        try:
            BundlePolicy(bundle)
        except Exception:  # the sympy payload loads fine, the pytree one fails after its import ran
            pass
    assert marker.exists(), "the crafted payload no longer runs through torch: the test proves nothing"
    marker.unlink()
    with pytest.raises(BundleError, match=f"policy.json is refused: .*{reason}") as refused:
        BundlePolicy(bundle)
    assert "\n" not in str(refused.value) and not marker.exists()


def first_node(program: dict, target: str) -> dict:
    return next(node for node in program["graph_module"]["graph"]["nodes"] if node["target"] == target)


@pytest.mark.parametrize("change, reason", [
    # torch.export.load compiles guards_code with exec (BundlePolicy passes no example inputs, so torch
    # does not build guards from it today; refused all the same)
    (lambda p: p["guards_code"].insert(0, "__import__('os').system('true')"),
     r"guard .* has .__import__\(.os.\)\.sys. where only literals"),
    (lambda p: first_node(p, "torch.ops.aten.relu.default").update(target="torch.os.system"),
     r"calls 'torch.os.system', which is not an ATen operator in this runtime's ALLOWED_OPS"),
    (lambda p: first_node(p, "torch.ops.aten.relu.default").update(target="torch.ops.aten.from_file.default"),
     r"calls 'torch.ops.aten.from_file.default'"),
    (lambda p: first_node(p, "torch.ops.aten.relu.default").update(name="x = 1; import os"),
     r"name 'x = 1; import os' is not a plain name"),
    (lambda p: first_node(p, "torch.ops.aten.relu.default").update(metadata={"stack_trace": "x"}),
     r"carries metadata"),
    (lambda p: p["graph_module"]["signature"]["input_specs"].append({"custom_obj": {}}),
     r"its inputs are not all of \['user_input', 'parameter', 'buffer', 'tensor_constant'\]"),
    (lambda p: first_node(p, "torch.ops.aten.relu.default")["inputs"][0].update(
        arg={"as_custom_obj": {"name": "x", "class_fqn": "os.system"}}), r"a custom object \(as_custom_obj\)"),
    (lambda p: p["graph_module"].pop("graph"), r"not an exported program \(KeyError"),
])
def test_a_program_outside_what_svrl_exports_is_refused(bundle, change, reason):
    edit_program(bundle, change)
    with pytest.raises(BundleError, match=f"policy.json is refused: .*{reason}"):
        BundlePolicy(bundle)


def test_the_weights_file_is_standard_safetensors_and_checked(bundle):
    from safetensors.torch import load_file

    tensors = load_file(bundle / "policy.safetensors")
    assert tensors and all(key.startswith(("state_dict/", "constants/")) for key in tensors)
    data = bytearray((bundle / "policy.safetensors").read_bytes())
    data[:8] = (10 ** 12).to_bytes(8, "little")  # a header length past the end, checksums recomputed
    (bundle / "policy.safetensors").write_bytes(bytes(data))
    write_manifest(bundle, "tiny")
    with pytest.raises(BundleError, match="policy.safetensors is not a tensor file this runtime reads"):
        BundlePolicy(bundle)
    (bundle / "policy.safetensors").write_bytes(bytes(data[:-1]) + b"!")  # tampered, manifest not recomputed
    with pytest.raises(BundleError, match="policy.safetensors does not match its sha256"):
        BundlePolicy(bundle)


def outside_file(tmp_path: pathlib.Path) -> tuple[pathlib.Path, dict]:
    import hashlib

    outside = tmp_path / "outside.txt"
    outside.write_text("not part of the bundle")
    return outside, {"sha256": hashlib.sha256(outside.read_bytes()).hexdigest(), "bytes": outside.stat().st_size}


def symlink_out(directory: pathlib.Path, tmp_path: pathlib.Path) -> None:
    outside, entry = outside_file(tmp_path)
    (directory / "link.txt").symlink_to(outside)
    rewrite_manifest(directory, lambda m: m["files"].update({"link.txt": entry}))


def names_a_tokenizer_it_does_not_list(directory: pathlib.Path) -> None:
    spec = json.loads((directory / "bundle.json").read_text())
    spec["preprocessing"]["tokenizer_file"] = "tokenizer.json"
    (directory / "bundle.json").write_text(json.dumps(spec))
    (directory / "tokenizer.json").write_text("{}")
    write_manifest(directory, "tiny")
    rewrite_manifest(directory, lambda m: m["files"].pop("tokenizer.json"))


def entry(name: str, **update):
    return lambda m: m["files"][name].update(update)


@pytest.mark.parametrize("damage, reason", [
    (lambda d, t: (d / "manifest.json").write_text('{"files": {}}'), r"has format None, this runtime reads"),
    (lambda d, t: rewrite_manifest(d, lambda m: m.update(files={})),
     r"does not list bundle.json, policy.json, policy.safetensors, provenance.json: every file the runtime reads"),
    (lambda d, t: rewrite_manifest(d, lambda m: m["files"].pop("policy.safetensors")),
     r"does not list policy.safetensors"),
    (lambda d, t: rewrite_manifest(d, lambda m: m["files"].pop("policy.json")), r"does not list policy.json"),
    (lambda d, t: rewrite_manifest(d, lambda m: m["files"].update({"../outside.txt": outside_file(t)[1]})),
     r"names '../outside.txt': file names must be relative paths inside the bundle"),
    (lambda d, t: rewrite_manifest(d, lambda m: m["files"].update({str(outside_file(t)[0]): outside_file(t)[1]})),
     r"names '/.*outside.txt': file names must be relative paths"),
    (lambda d, t: rewrite_manifest(d, lambda m: m["files"].update({"checkpoint\\config.json": {}})),
     r"names 'checkpoint\\\\config.json'"),
    (symlink_out, r"names 'link.txt', which resolves to .*outside.txt, outside the bundle"),
    (lambda d, t: rewrite_manifest(d, lambda m: m["files"]["bundle.json"].pop("bytes")),
     r"entry 'bundle.json': bytes must be a non-negative integer, got None"),
    (lambda d, t: rewrite_manifest(d, entry("bundle.json", bytes="7416")), r"bytes must be a non-negative integer"),
    (lambda d, t: rewrite_manifest(d, entry("bundle.json", bytes=-1)), r"bytes must be a non-negative integer"),
    (lambda d, t: rewrite_manifest(d, entry("bundle.json", sha256="abc")),
     r"entry 'bundle.json': sha256 must be 64 lowercase hex digits, got 'abc'"),
    (lambda d, t: rewrite_manifest(d, lambda m: m["files"].update({"bundle.json": "abc"})),
     r"entry 'bundle.json' must be a map with sha256 and bytes, got str"),
    (lambda d, t: rewrite_manifest(d, lambda m: m.update(files=sorted(m["files"]))),
     r"'files' must map each file name to \{\"sha256\", \"bytes\"\}, got list"),
    (lambda d, t: (d / "manifest.json").write_text("[]"), r"is a JSON list, not an object"),
    (lambda d, t: rewrite_manifest(d, lambda m: m["files"].update({"manifest.json": m["files"]["bundle.json"]})),
     r"lists manifest.json, which cannot be checksummed"),
    (lambda d, t: names_a_tokenizer_it_does_not_list(d), r"does not list 'tokenizer.json', the tokenizer bundle.json"),
])
def test_a_malformed_manifest_is_refused_in_one_clear_line(bundle, tmp_path, damage, reason):
    damage(bundle, tmp_path)
    with pytest.raises(BundleError, match=reason) as refused:
        BundlePolicy(bundle)
    message = str(refused.value)
    assert "\n" not in message and ("re-export it" in message or "re-export" in message), message


def test_files_the_manifest_does_not_list_are_ignored(bundle):
    (bundle / "notes.txt").write_text("never read")
    (bundle / "__pycache__").mkdir()
    (bundle / "__pycache__/runtime.cpython-311.pyc").write_bytes(b"\0")
    assert BundlePolicy(bundle).act(*OBS).shape == (4, 2)


def test_a_signed_bundle_loads_only_with_its_key_and_unchanged(bundle):
    from svrl_core.export import read_manifest, sign_bundle

    BundlePolicy(bundle)  # unsigned, no key: loads
    with pytest.raises(BundleError, match=r"not signed \(no manifest.sig\) but a signing key was given"):
        BundlePolicy(bundle, signing_key=KEY)
    signature = sign_bundle(bundle, KEY)
    assert (bundle / "manifest.sig").read_text().strip() == signature and len(signature) == 64
    expected = BundlePolicy(bundle).act(*OBS)
    assert np.array_equal(BundlePolicy(bundle, signing_key=KEY).act(*OBS), expected)
    assert read_manifest(bundle, signing_key=KEY)["files"]
    with pytest.raises(BundleError, match="manifest.sig does not match manifest.json under this key"):
        BundlePolicy(bundle, signing_key=b"another-key-0123456789")
    with pytest.raises(BundleError, match="manifest.sig does not match"):
        read_manifest(bundle, signing_key=b"another-key-0123456789")
    manifest = (bundle / "manifest.json").read_text()
    (bundle / "manifest.json").write_text(manifest.replace('"name": "tiny"', '"name": "tinz"'))  # edited after signing
    with pytest.raises(BundleError, match="the manifest was changed after signing or signed with another key"):
        BundlePolicy(bundle, signing_key=KEY)
    (bundle / "manifest.json").write_text(manifest)
    (bundle / "manifest.sig").write_text("not hex\n")
    with pytest.raises(BundleError, match="manifest.sig is not 64 lowercase hex digits"):
        BundlePolicy(bundle, signing_key=KEY)
    with pytest.raises(TypeError, match="must be bytes"):
        BundlePolicy(bundle, signing_key=KEY.decode())
    with pytest.raises(ValueError, match="at least 16 bytes"):
        sign_bundle(bundle, b"short")


def test_a_changed_bundle_is_never_signed_and_export_can_sign(bundle, tiny_policy, tmp_path):
    from svrl_core.export import sign_bundle

    (bundle / "bundle.json").write_text("{}")
    with pytest.raises(BundleError, match="bundle.json does not match its sha256"):
        sign_bundle(bundle, KEY)
    assert not (bundle / "manifest.sig").exists()
    export_bundle(tiny_policy, tmp_path / "signed", "tiny", signing_key=KEY)
    assert BundlePolicy(tmp_path / "signed", signing_key=KEY).act(*OBS).shape == (4, 2)
