"""The vLLM engine: offline `vllm.LLM`, the whole batch per call, plus continuous-batched chains.

`generate` hands vLLM every conversation at once. `agenerate` adds one request to the same engine and
resolves when it finishes; a single pump steps the engine while any request is pending, so a multi-step
stage's rows each send their next request the moment their last one finished and the batch stays full.

On a machine without a GPU we apply the CPU settings that work here (see DESIGN.md): KV cache size, OpenMP
threads bound to every core we may use, eager mode, caches under $CAI_HOME, and the engine core in-process —
which starts faster and makes a seeded call reproducible (we reseed torch before each call). There the fp32
output head is used only to score choices; sampling uses the model's own head, as transformers does, and
top-p goes through our sort-free nucleus processor (engines/vllm_nucleus.py).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from functools import partial

from cai_pipeline.engines.base import Completion, EngineStats, GenParams, Message, error_completion, too_long
from cai_pipeline.engines.chat import choice_token_ids, prompt_ids
from cai_pipeline.engines.nucleus import KEY as NUCLEUS_KEY
from cai_pipeline.errors import UserError
from cai_pipeline.models import cai_home

NUCLEUS = "cai_pipeline.engines.vllm_nucleus:Nucleus"  # by name: vLLM imports it, we need not


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_environment(kv_cache_gb: float) -> dict[str, str]:
    cores = sorted(os.sched_getaffinity(0))
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(int(kv_cache_gb) if float(kv_cache_gb).is_integer() else kv_cache_gb),
        # vLLM's default binds one core only; bind all we have.
        "VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]}-{cores[-1]}" if len(cores) > 1 else str(cores[0]),
        "VLLM_CACHE_ROOT": str(cai_home() / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cai_home() / "inductor"),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }


def set_head(model, fp32: bool) -> bool:
    """Switch the output head between the model's dtype (sampling) and fp32 (scoring); False where this model
    does not expose the pieces. On CPU, vLLM's fp32 head casts the bf16 weight (49k x 576 here) to fp32 at
    every decode step, a fifth of the step: we keep one fp32 copy for scoring and sample with the bf16 head,
    as transformers' generate does. The embedding keeps its own bf16 weight throughout."""
    import torch

    head, logits = getattr(model, "lm_head", None), getattr(model, "logits_processor", None)
    if not isinstance(getattr(head, "weight", None), torch.Tensor) or not hasattr(logits, "head_dtype"):
        return False
    if not hasattr(model, "_cai_heads"):  # first call: remember both weights and vLLM's own head dtype
        weight = torch.nn.Parameter(head.weight.detach().float(), requires_grad=False)
        model._cai_heads = {True: (weight, torch.float32), False: (head.weight, head.weight.dtype)}
    head.weight, logits.head_dtype = model._cai_heads[fp32]
    return True


def import_vllm():
    try:
        import vllm
    except ImportError:
        raise UserError(
            "engine.kind=vllm needs vLLM: `pip install 'cai-pipeline[cpu]'` (CPU) or `pip install "
            "'cai-pipeline[gpu]'` (CUDA), or use engine.kind=hf"
        ) from None
    return vllm


class VLLMEngine:
    name = "vllm"

    def __init__(self, model: str, *, dtype: str = "bfloat16", seed: int = 0, max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.85, tensor_parallel_size: int = 1,
                 kv_cache_gb: float = 2, trust_remote_code: bool = False, fp32_head: bool = True,
                 block_size: int | None = None, row_seeds: bool = False):
        self.model = model
        # Per-request seeds (SamplingParams.seed) crash on CPU when a seeded prompt is prefilled in chunks
        # ("CPU Generator does not use offset"); without chunked prefill they work, and a request's output no
        # longer depends on its batch.
        self.row_seeds = row_seeds
        self.on_cpu = not has_cuda()
        if self.on_cpu:
            for key, value in cpu_environment(kv_cache_gb).items():
                os.environ.setdefault(key, value)
        vllm = import_vllm()
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=model, dtype=dtype, seed=seed, max_model_len=max_model_len or self._default_len(model),
            enforce_eager=self.on_cpu, gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size, trust_remote_code=trust_remote_code,
            load_format="safetensors", hf_overrides={"head_dtype": "float32"} if fp32_head else None,
            logits_processors=[NUCLEUS] if self.on_cpu else None,
            use_tqdm_on_load=False,  # a progress bar per checkpoint shard is noise in a pipeline's output
            **({"enable_chunked_prefill": False} if row_seeds else {}),
            **({"block_size": block_size} if block_size else {}),
        )
        self.nucleus = self.on_cpu  # on GPU vLLM's own top-p is fast
        # On CUDA vLLM accumulates the fp32 head without a cast, so it stays on for every call there.
        self._head_modes = fp32_head and self.on_cpu and all(self.llm.apply_model(partial(set_head, fp32=False)))
        self._head_fp32 = False
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.stats = EngineStats()
        self._ids = itertools.count()
        self._pending: dict[str, tuple[asyncio.Future, int]] = {}
        self._pump: asyncio.Task | None = None

    @staticmethod
    def _default_len(model: str) -> int:
        from transformers import AutoConfig

        return min(getattr(AutoConfig.from_pretrained(model), "max_position_embeddings", 4096), 4096)

    def count_tokens(self, conv: list[Message]) -> int:
        return len(prompt_ids(self.tokenizer, conv))

    def _sampling(self, params: GenParams, prompt_len: int, seed: int | None = None):
        # vLLM refuses n > 1 when greedy; greedy samples are identical anyway, so we copy one (see _completions).
        sampling = params.temperature > 0
        top_p = params.top_p if sampling else 1.0
        nucleus = self.nucleus and top_p < 1.0  # our processor finds the nucleus without a vocabulary sort
        return self._vllm.SamplingParams(
            n=params.n if sampling else 1, temperature=params.temperature, top_p=1.0 if nucleus else top_p,
            extra_args={NUCLEUS_KEY: top_p} if nucleus else None,
            max_tokens=min(params.max_tokens, self.max_model_len - prompt_len), stop=list(params.stop),
            seed=seed if self.row_seeds else None,
        )

    def _reseed(self, seed: int | None) -> None:
        """Make the next call replayable: the in-process sampler draws from this process's torch generator,
        and an empty prefix cache means a resumed run computes every prefix exactly as the first run did."""
        if seed is not None and self.on_cpu:
            import torch

            torch.manual_seed(seed)
            self.llm.reset_prefix_cache()

    def _use_head(self, fp32: bool) -> None:
        if self._head_modes and self._head_fp32 != fp32:
            self.llm.apply_model(partial(set_head, fp32=fp32))
            self._head_fp32 = fp32

    def _request(self, conv: list[Message], params: GenParams, seed: int | None = None):
        ids = prompt_ids(self.tokenizer, conv)
        if len(ids) >= self.max_model_len:
            return None, too_long(len(ids), self.max_model_len)
        seed = params.seed if seed is None else seed  # with row_seeds: the row's own, else the call's
        return (self._vllm.inputs.TokensPrompt(prompt_token_ids=ids), self._sampling(params, len(ids), seed)), None

    def _completions(self, output, n: int) -> list[Completion]:
        comps = []
        for c in output.outputs:
            self.stats.output_tokens += len(c.token_ids)
            reason = "length" if c.finish_reason == "length" else "stop"
            comps.append(Completion(text=c.text, finish_reason=reason, n_tokens=len(c.token_ids)))
        return comps * n if len(comps) == 1 else comps

    def generate(self, convs: list[list[Message]], params: GenParams,
                 seeds: list[int] | None = None) -> list[list[Completion]]:
        """`seeds`: one per conversation (with row_seeds on): each request draws from its own generator."""
        self._use_head(fp32=False)
        self._reseed(params.seed)
        requests, out = [], [None] * len(convs)
        for i, conv in enumerate(convs):
            req, err = self._request(conv, params, seeds[i]) if seeds is not None else self._request(conv, params)
            if err:
                out[i] = [error_completion(err)]
            else:
                requests.append((i, req))
        if requests:
            results = self.llm.generate([r[0] for _, r in requests], [r[1] for _, r in requests], use_tqdm=False)
            for (i, _), res in zip(requests, results):
                out[i] = self._completions(res, params.n)
        return out

    async def agenerate(self, conv: list[Message], params: GenParams) -> list[Completion]:
        req, err = self._request(conv, params)  # with row_seeds, params.seed is the row's step's own
        if err:
            return [error_completion(err)]
        if self._pump is None or self._pump.done():
            # A new burst of chains: reseed once, so the same shard replays the same way on resume.
            self._use_head(fp32=False)
            self._reseed(params.seed)
            self._pump = asyncio.get_running_loop().create_task(self._step_while_pending())
        rid = f"chain-{next(self._ids)}"
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = (future, params.n)
        self.llm.llm_engine.add_request(rid, req[0], req[1])
        try:
            return await future
        except asyncio.CancelledError:
            # The row's chain was cancelled (Ctrl-C): withdraw its request, or the engine would go on generating
            # it, and the pump would hand its result to a future nobody waits for.
            self._withdraw(rid)
            raise

    def _withdraw(self, rid: str) -> None:
        if self._pending.pop(rid, None) is not None and self.llm is not None:
            try:
                self.llm.llm_engine.abort_request([rid])
            except Exception:  # an engine interrupted mid-step may refuse; the process is stopping anyway
                pass

    async def _step_while_pending(self) -> None:
        engine = self.llm.llm_engine
        try:
            while True:
                # Yield first: rows whose request just finished add their next one before this step runs.
                await asyncio.sleep(0)
                if not self._pending:
                    return
                for output in engine.step():
                    entry = self._pending.pop(output.request_id, None) if output.finished else None
                    if entry is not None and not entry[0].done():  # a cancelled row's future takes nothing
                        entry[0].set_result(self._completions(output, entry[1]))
        except Exception as e:  # fail every waiting row rather than leave them waiting forever
            for future, _ in self._pending.values():
                if not future.done():
                    future.set_exception(e)
            self._pending.clear()

    def choice_logprobs(self, convs: list[list[Message]], choices: list[str]) -> list[dict[str, float]]:
        """One request per conversation, one decoded token, asking vLLM for the log-probs of exactly the
        choice tokens (`logprob_token_ids`): the raw model's log P(choice | conversation), one prefill.
        The prefix cache is emptied first so a conversation scores the same whatever ran before it (the
        judge's exact symmetry rests on that)."""
        choice_ids = choice_token_ids(self.tokenizer, choices)
        encoded = [prompt_ids(self.tokenizer, conv) for conv in convs]
        fits = [i for i, ids in enumerate(encoded) if len(ids) < self.max_model_len]
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0, logprob_token_ids=choice_ids)
        prompts = [self._vllm.inputs.TokensPrompt(prompt_token_ids=encoded[i]) for i in fits]
        self._use_head(fp32=True)
        self.llm.reset_prefix_cache()
        results = self.llm.generate(prompts, params, use_tqdm=False) if prompts else []
        out: list[dict[str, float]] = [{} for _ in convs]  # empty: the conversation does not fit the context
        for i, res in zip(fits, results):
            scored = res.outputs[0].logprobs[0]
            out[i] = {choice: float(scored[cid].logprob) for choice, cid in zip(choices, choice_ids)}
        return out

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
            import gc

            gc.collect()
