"""The raw decode ceiling for `bench node`: llama_decode alone, one token per sequence, no HTTP or sampling.

The node's engine context (`inference.node.engine.context_params`: one KV stream per sequence,
flash attention, the same threads), then the median time of one decode step at each concurrency.
Generated tokens per second can never beat `concurrency / step time` on this machine, whatever
server runs the model, so the ceiling tells which targets the CPU allows.
"""

import statistics
import time

STEPS = 60  # timed steps per concurrency, after WARMUP
WARMUP = 10


def ceiling(model_path: str, *, threads: int, n_ctx: int, levels: list[int]) -> dict[int, float]:
    """Tokens per second that llama_decode alone reaches at each concurrency (one token per sequence per step)."""
    import llama_cpp
    from llama_cpp import _internals as internals

    from inference.node.engine import context_params

    slots = max(levels)
    llama_cpp.llama_backend_init()
    model = internals.LlamaModel(path_model=model_path, params=llama_cpp.llama_model_default_params(), verbose=False)
    params = context_params(slots=slots, n_ctx=n_ctx, n_threads=threads)
    ctx = internals.LlamaContext(model=model, params=params, verbose=False)
    memory = llama_cpp.llama_get_memory(ctx.ctx)
    batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
    try:
        rates = {}
        for n in levels:
            llama_cpp.llama_memory_clear(memory, True)
            times = []
            for pos in range(WARMUP + STEPS):
                batch.n_tokens = n
                for i in range(n):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = 100 + i, pos, 1, 1
                    batch.seq_id[i][0] = i
                started = time.perf_counter()
                if llama_cpp.llama_decode(ctx.ctx, batch) != 0:
                    raise RuntimeError(f"llama_decode failed at {n} sequences")
                times.append(time.perf_counter() - started)
            rates[n] = n / statistics.median(times[WARMUP:])
        return rates
    finally:
        llama_cpp.llama_batch_free(batch)
        ctx.close()
        model.close()
