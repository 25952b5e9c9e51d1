"""The transformers engine: batched generation with left padding; no server, no vLLM needed.

Slower than vLLM (no continuous batching, no paged KV cache) but it runs anywhere torch runs, and its
`generate` is deterministic for a given seed and batch, which makes it the reference engine in tests.
"""

from __future__ import annotations

import torch

from cai_pipeline.engines.base import Completion, EngineStats, GenParams, Message, error_completion, too_long
from cai_pipeline.engines.chat import choice_token_ids, end_token_ids, prompt_ids, trim_at_stop
from cai_pipeline.engines.nucleus import mask_outside_nucleus_
from cai_pipeline.errors import UserError

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def load_model(path: str, dtype: str, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=_DTYPES[dtype], use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except OSError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"model: cannot load {path!r} ({first}); give a local folder with safetensors weights") from None
    model.eval()
    return tokenizer, model


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


class TemperatureNucleus:
    """A transformers logits processor: temperature, then our sort-free top-p (nucleus.py). transformers runs
    a custom processor before its own warpers, so this one does both, and generate gets temperature 1 and
    top_p 1 (no warpers of its own): the same scores / T, the same kept tokens, without the vocabulary sort."""

    def __init__(self, temperature: float, top_p: float):
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores / self.temperature
        return mask_outside_nucleus_(scores, torch.full((scores.shape[0],), self.top_p))


class HFEngine:
    name = "hf"

    def __init__(self, model: str, *, dtype: str = "bfloat16", batch_size: int = 16,
                 max_model_len: int | None = None, trust_remote_code: bool = False, fp32_head: bool = True,
                 row_seeds: bool = False):
        self.model = model
        self.row_seeds = row_seeds  # generate(..., seeds=): each row alone, after its own torch seed
        self.tokenizer, self.lm = load_model(model, dtype, trust_remote_code)
        self.batch_size = batch_size
        self.fp32_head = fp32_head
        self.nucleus = True  # top-p by TemperatureNucleus rather than transformers' sort
        self.max_model_len = max_model_len or min(self.lm.config.max_position_embeddings, 4096)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = end_token_ids(self.tokenizer, self.lm.generation_config)
        self.stats = EngineStats()

    def count_tokens(self, conv: list[Message]) -> int:
        return len(prompt_ids(self.tokenizer, conv))

    def generate(self, convs: list[list[Message]], params: GenParams,
                 seeds: list[int] | None = None) -> list[list[Completion]]:
        """`seeds`: one per conversation; each is then generated alone after its own seed, so its output does
        not depend on what else is in the call (batched rows share padding and the torch generator)."""
        if seeds is not None:
            out = []
            for conv, seed in zip(convs, seeds, strict=True):
                out += self.generate([conv], GenParams(**{**params.__dict__, "seed": seed}))
            return out
        if params.seed is not None:
            torch.manual_seed(params.seed)
        encoded = [prompt_ids(self.tokenizer, c) for c in convs]
        out: list[list[Completion]] = [[] for _ in convs]
        fits = [i for i, ids in enumerate(encoded) if len(ids) < self.max_model_len]
        for i in set(range(len(convs))) - set(fits):
            out[i] = [error_completion(too_long(len(encoded[i]), self.max_model_len))]
        # Similar lengths together: less padding. The seed covers the call, so the order is fixed too.
        fits.sort(key=lambda i: len(encoded[i]))
        per_batch = max(1, self.batch_size // params.n)
        for start in range(0, len(fits), per_batch):
            chunk = fits[start : start + per_batch]
            for i, comps in zip(chunk, self._generate_batch([encoded[i] for i in chunk], params)):
                out[i] = comps
        return out

    @torch.inference_mode()
    def _generate_batch(self, seqs: list[list[int]], params: GenParams) -> list[list[Completion]]:
        ids, mask = _left_pad(seqs, self.pad_id)
        budget = [min(params.max_tokens, self.max_model_len - len(s)) for s in seqs]
        sampling = params.temperature > 0
        # Greedy samples are identical, and transformers refuses n > 1 without sampling: decode once, copy.
        per_row = params.n if sampling else 1
        gen = self.lm.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max(budget), do_sample=sampling,
            **self._warping(params), top_k=None, num_return_sequences=per_row, pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids),
            stop_strings=list(params.stop) or None, tokenizer=self.tokenizer if params.stop else None,
        )
        new = gen[:, ids.shape[1] :].tolist()
        return [[self._completion(new[b * per_row + (k % per_row)], budget[b], params) for k in range(params.n)]
                for b in range(len(seqs))]

    def _warping(self, params: GenParams) -> dict:
        if params.temperature <= 0:
            return {"temperature": None, "top_p": None}
        if self.nucleus and params.top_p < 1.0:
            from transformers import LogitsProcessorList

            return {"temperature": 1.0, "top_p": 1.0,
                    "logits_processor": LogitsProcessorList([TemperatureNucleus(params.temperature, params.top_p)])}
        return {"temperature": params.temperature, "top_p": params.top_p}

    def _completion(self, tokens: list[int], budget: int, params: GenParams) -> Completion:
        end = next((j for j, t in enumerate(tokens) if t in self.eos_ids), None)
        tokens = tokens[: end + 1] if end is not None else tokens[:budget]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        text, stopped = trim_at_stop(text, params.stop)
        self.stats.output_tokens += len(tokens)
        reason = "stop" if end is not None or stopped else "length"
        return Completion(text=text, finish_reason=reason, n_tokens=len(tokens))

    @torch.inference_mode()
    def choice_logprobs(self, convs: list[list[Message]], choices: list[str]) -> list[dict[str, float]]:
        choice_ids = choice_token_ids(self.tokenizer, choices)
        encoded = [prompt_ids(self.tokenizer, c) for c in convs]
        out: list[dict[str, float]] = [{} for _ in convs]  # empty: the conversation does not fit the context
        order = sorted((i for i in range(len(convs)) if len(encoded[i]) < self.max_model_len),
                       key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            ids, mask = _left_pad([encoded[i] for i in chunk], self.pad_id)
            # Left padding shifts positions; give the real ones so scores match an unpadded pass (and vLLM).
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logps = torch.log_softmax(self._last_logits(ids, mask, positions), dim=-1)
            for row, i in enumerate(chunk):
                out[i] = {c: float(logps[row, t]) for c, t in zip(choices, choice_ids)}
        return out

    def _last_logits(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """fp32 logits of the last position. The output projection runs in fp32 on the bf16 hidden state:
        bf16 logits are quantised to steps of ~0.1 nat at this scale, which would blur the judge's
        probabilities for no saving. Models that post-process logits (soft-capping, scaling) keep their own."""
        cfg = self.lm.config
        head = self.lm.get_output_embeddings()
        custom = getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None)
        if not self.fp32_head or custom or head is None:
            out = self.lm(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
            return out.logits[:, -1].float()
        hidden = self.lm.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        bias = head.bias.float() if getattr(head, "bias", None) is not None else None
        return torch.nn.functional.linear(hidden[:, -1].float(), head.weight.float(), bias)

    def close(self) -> None:
        self.lm = None
