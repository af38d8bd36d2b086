"""GGUF files as models: load one through transformers' own GGUF support, or convert it once into a
normal Hugging Face directory that every stage (train, eval, serve, the native engine, bench) reads.

The `gguf` package is an optional extra (`pip install 'qaforge[gguf]'`); nothing here imports it, torch
or transformers at module level, so `qaforge --help` stays fast.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

# llama.cpp's `general.architecture` -> the HF model_type that `modeling.model_family` checks.
GGUF_ARCH_TO_MODEL_TYPE = {"qwen2": "qwen2", "qwen3": "qwen3"}
# Chat models of the Qwen family end a turn with <|im_end|> and a document with <|endoftext|>; a GGUF
# names only one of them as EOS, but generation must stop at either (as Qwen2.5's generation_config does).
QWEN_END_TOKENS = ("<|im_end|>", "<|endoftext|>")
CACHE_FORMAT = 1  # bump when the written directory changes, so old caches are not reused
_SAMPLE_BYTES = 1 << 20


def _require_gguf_package() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise ImportError("reading .gguf files needs the `gguf` package: pip install 'qaforge[gguf]'") from exc


def _check_file(path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
    return path


def gguf_architecture(path: str | os.PathLike) -> str:
    """The file's `general.architecture` (e.g. 'qwen2'), read from the header alone."""
    path = _check_file(Path(path))
    _require_gguf_package()
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.architecture")
    if field is None:
        raise ValueError(f"{path} has no general.architecture key: not a model GGUF")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def check_supported(path: str | os.PathLike) -> str:
    """The model family of a GGUF file; for any other architecture, `model_family`'s error with the file named."""
    from qaforge.families import model_family

    arch = gguf_architecture(path)
    try:
        return model_family({"model_type": GGUF_ARCH_TO_MODEL_TYPE.get(arch, arch)})
    except ValueError as exc:
        raise ValueError(f"{path}: GGUF architecture {arch!r}: {exc}") from None


def _dequantize_kwargs() -> dict:
    """Newer transformers can keep GGUF weights packed in their quantized blocks (GgufLinear) when a
    matmul kernel exists for the device; training, merging and the native engine need plain dense
    weights, so ask for dequantization explicitly where the option exists (older releases always
    dequantize and have no GgufConfig)."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


@contextlib.contextmanager
def _one_parse_per_file():
    """transformers parses a GGUF's metadata anew for its config, its weights and its tokenizer, and so do
    the checks here: 4-6 parses, each walking every vocabulary string and merge (Qwen's 151k of each: about a
    minute per parse on a slow CPU, most of a conversion's time). While this is open, every
    `gguf.GGUFReader(path)` of the same file returns one reader (readers are read-only memory maps)."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def shared(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = original


def load_gguf(path: str | os.PathLike, dtype: str = "float32"):
    """(model, tokenizer) from a GGUF file: the weights dequantized to `dtype`, the tokenizer and
    chat template the file carries."""
    with _one_parse_per_file():
        return _load_gguf(path, dtype)


def _load_gguf(path: str | os.PathLike, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _check_file(Path(path))
    check_supported(path)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    folder, name = str(path.parent.resolve()), path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype),
                                                 **_dequantize_kwargs())
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{path} carries no tokenizer.chat_template: qaforge formats every prompt as chat")
    _align_tokenizer_with_file(tokenizer, path)
    if tokenizer.model_max_length > 10**9:  # a GGUF names no tokenizer limit; its context length is the real one
        tokenizer.model_max_length = int(model.config.max_position_embeddings)
    return model.eval(), tokenizer


def _align_tokenizer_with_file(tokenizer, path: Path) -> None:
    """Make the tokenizer say what the file says, where older transformers releases do not
    (a no-op where they already do):
    - llama.cpp marks added tokens that are not special (Qwen's `<think>`, `<tool_call>`) as
      USER_DEFINED and always matches them whole; transformers 5.17 adds only the CONTROL ones, so
      `<think>` in a Qwen3 chat prompt would be cut into byte pieces the model never saw;
    - the file's EOS / padding / BOS ids name the special tokens; 5.17's Qwen2 converter fixes EOS
      to `<|endoftext|>` although an instruct file ends its turns with `<|im_end|>`."""
    from gguf import GGUFReader, TokenType
    from tokenizers import AddedToken

    fields = GGUFReader(str(path)).fields
    tokens, types = fields.get("tokenizer.ggml.tokens"), fields.get("tokenizer.ggml.token_type")
    if tokens is None:
        return

    def token(i: int) -> str:
        return bytes(tokens.parts[tokens.data[i]]).decode("utf-8")

    added, vocab = tokenizer.get_added_vocab(), tokenizer.get_vocab()
    missing = [AddedToken(token(i), normalized=False, special=False)
               for i, part in enumerate(types.data if types is not None else [])
               if int(types.parts[part][0]) == TokenType.USER_DEFINED]
    missing = [t for t in missing if t.content in vocab and t.content not in added]
    if missing:
        tokenizer.add_tokens(missing)
    for name, key in (("eos_token", "eos_token_id"), ("pad_token", "padding_token_id"), ("bos_token", "bos_token_id")):
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is not None and getattr(tokenizer, name) != token(int(field.parts[field.data[0]][0])):
            setattr(tokenizer, name, token(int(field.parts[field.data[0]][0])))


def eos_token_ids(model, tokenizer) -> list[int]:
    ids = []
    for value in (model.config.eos_token_id, *[tokenizer.convert_tokens_to_ids(t) for t in QWEN_END_TOKENS
                                              if t in tokenizer.get_vocab()]):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))
    return ids


def _tied_duplicates(state_dict: dict) -> list[str]:
    """Names whose tensor is the same storage as an earlier name's (lm_head.weight when the
    embeddings are tied): written once, so the directory stays tied when it is loaded back."""
    seen, duplicates = set(), []
    for name, tensor in state_dict.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            duplicates.append(name)
        seen.add(key)
    return duplicates


def write_hf_dir(model, tokenizer, out_dir: Path) -> Path:
    """Write a GGUF-loaded model as a plain HF directory.

    `model.save_pretrained` refuses: the model still carries its GGUF quantizer, which reports itself
    "not serializable" because it cannot write GGUF blocks back. After dequantization the weights are
    ordinary dense tensors, so we write them ourselves (safetensors, sharded like save_pretrained)
    and save the config with the quantization_config dropped: what is written is exactly a normal
    unquantized checkpoint, and nothing in it refers to the GGUF file.
    """
    from huggingface_hub import save_torch_state_dict
    from transformers import GenerationConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach() for k, v in model.state_dict().items()}
    tied = _tied_duplicates(state_dict)
    if tied and not model.config.get_text_config().tie_word_embeddings:
        raise ValueError(f"tensors {tied} share storage but the config does not tie the embeddings")
    save_torch_state_dict(state_dict, out_dir, shared_tensors_to_discard=tied, metadata={"format": "pt"})
    for shard in out_dir.glob("*.safetensors"):  # written through a private temp file (0600): readable like the rest
        shard.chmod(0o644)

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.architectures = [type(model).__name__]
    config.save_pretrained(out_dir)
    _add_legacy_config_keys(out_dir / "config.json", str(next(model.parameters()).dtype).split(".")[-1])

    tokenizer.save_pretrained(out_dir)
    _embed_chat_template(out_dir / "tokenizer_config.json", tokenizer.chat_template)
    eos = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id
    GenerationConfig(bos_token_id=model.config.bos_token_id, eos_token_id=(eos if len(eos) > 1 else eos[0]) if eos
                     else None, pad_token_id=pad).save_pretrained(out_dir)
    return out_dir


def _add_legacy_config_keys(config_path: Path, dtype: str) -> None:
    """Top-level `rope_theta` and `torch_dtype` too, as published Qwen2.5 configs have them: older
    transformers and vLLM releases read those keys, newer ones `rope_parameters` and `dtype`."""
    config = json.loads(config_path.read_text())
    config.pop("_name_or_path", None)
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
    config["dtype"] = dtype
    config.setdefault("torch_dtype", dtype)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def _embed_chat_template(path: Path, template: str) -> None:
    """Newer transformers write the template to chat_template.jinja only; keep it in
    tokenizer_config.json as well, where older loaders and vLLM's tokenizer loading look first."""
    config = json.loads(path.read_text())
    if config.get("chat_template") != template:
        config["chat_template"] = template
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False))


def convert(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "bfloat16") -> Path:
    """Convert a GGUF file into a normal HF directory (config.json, *.safetensors, tokenizer files
    with the chat template, generation_config.json) and return its path."""
    model, tokenizer = load_gguf(gguf_path, dtype)
    return write_hf_dir(model, tokenizer, Path(out_dir))


# ----------------------------------------------------------------------------------------------
# the conversion cache behind `--model file.gguf`
# ----------------------------------------------------------------------------------------------
def cache_root() -> Path:
    root = os.environ.get("QAFORGE_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "qaforge") / "gguf"


def cache_dtype() -> str:
    """bfloat16 unless QAFORGE_GGUF_DTYPE says otherwise: what published Qwen checkpoints ship, half
    the disk of float32; the difference to a float32 dequantization is far below the quantization error."""
    dtype = os.environ.get("QAFORGE_GGUF_DTYPE", "bfloat16")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"QAFORGE_GGUF_DTYPE must be float32, bfloat16 or float16, got {dtype!r}")
    return dtype


def cache_key(path: Path, dtype: str) -> str:
    """A key that changes when the file does. Hashing a multi-GB file on every command would cost
    seconds, so the key is its size and mtime plus its first and last MiB (header and tail tensors),
    which a rewritten or swapped file changes."""
    stat = path.stat()
    digest = hashlib.sha256(f"{CACHE_FORMAT}|{dtype}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        digest.update(f.read(_SAMPLE_BYTES))
        f.seek(max(0, stat.st_size - _SAMPLE_BYTES))
        digest.update(f.read(_SAMPLE_BYTES))
    return digest.hexdigest()[:16]


def cached_hf_dir(gguf_path: str | os.PathLike) -> Path:
    """The HF directory for a GGUF file, converted on first use into the cache. The conversion is
    written to a temporary directory beside the cache entry and renamed into place, so a killed
    conversion never leaves a half-written entry that a later run would trust."""
    path = _check_file(Path(gguf_path))
    check_supported(path)
    dtype = cache_dtype()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)
    target = cache_root() / f"{name}-{cache_key(path, dtype)}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        convert(path, tmp, dtype)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache entry is an ordinary model directory
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent conversion that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
