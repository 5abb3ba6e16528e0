"""Facts from a GGUF file's header (through the `gguf` library), and a memory estimate."""

import functools
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"
# Metadata arrays (token lists, merges) are large and not needed here.
_SKIP_PREFIXES = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")


def is_gguf(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == GGUF_MAGIC


def read_header(path: Path) -> dict[str, Any]:
    """Architecture, parameter count, trained context, quantization, chat template, and what the estimate needs."""
    stat = path.stat()
    return dict(_read_header(str(path), stat.st_size, stat.st_mtime))


@functools.lru_cache(maxsize=32)
def _read_header(path: str, size: int, mtime: float) -> dict[str, Any]:
    # Parsing a header takes seconds in Python (the tokenizer arrays); the same file is read once per process.
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {k: f for k, f in reader.fields.items() if not k.startswith(_SKIP_PREFIXES)}

    def get(key: str, default: Any = None) -> Any:
        field = fields.get(key)
        return field.contents() if field is not None else default

    arch = str(get("general.architecture", ""))
    file_type = get("general.file_type")
    try:
        quantization = gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_") if file_type is not None else ""
    except ValueError:
        quantization = f"type_{file_type}"
    n_embd = int(get(f"{arch}.embedding_length", 0) or 0)
    n_head = int(get(f"{arch}.attention.head_count", 0) or 0)
    return {
        "architecture": arch,
        "parameter_count": sum(int(t.n_elements) for t in reader.tensors),
        "context_length": int(get(f"{arch}.context_length", 0) or 0) or None,
        "quantization": quantization,
        "has_chat_template": "tokenizer.chat_template" in fields,
        "metadata": {
            "name": str(get("general.name", "")),
            "n_layer": int(get(f"{arch}.block_count", 0) or 0),
            "n_embd": n_embd,
            "n_head": n_head,
            "n_head_kv": int(get(f"{arch}.attention.head_count_kv", n_head) or n_head),
        },
    }


# Compute buffers and runtime overhead on top of weights and KV cache, measured loosely on
# SmolLM2-135M under llama.cpp: tens of MB.
_OVERHEAD_BYTES = 64 * 1024 * 1024


def estimate_memory(*, size_bytes: int, metadata: dict[str, Any], n_ctx: int, embeddings: bool) -> int:
    """Bytes to hold the model at n_ctx: weights + f16 KV cache + overhead (twice for the embedding twin)."""
    n_layer, n_embd = metadata.get("n_layer", 0), metadata.get("n_embd", 0)
    n_head, n_head_kv = max(metadata.get("n_head", 1), 1), metadata.get("n_head_kv", 0)
    kv = 2 * n_layer * n_ctx * n_head_kv * (n_embd // n_head) * 2
    one = size_bytes + kv + _OVERHEAD_BYTES
    return one * 2 if embeddings else one
