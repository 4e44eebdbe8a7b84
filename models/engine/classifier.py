"""The classifier engine: load a checkpoint directory, classify texts in token-budget batches.

One small protocol (:class:`Classifier`: classify, health, limits; TEI's ``Backend``) with one
implementation per checkpoint kind, chosen by the manifest. Both kinds share :class:`Qwen3Engine`:
texts are tokenised once (Rust tokenizer, batch mode), sorted by length, cut into batches by a
token budget and a count cap, and each batch runs *packed*: one padding-free row of tokens with
per-text positions and per-text causal attention (:mod:`models.engine.attention`). A text therefore
gets the same arithmetic alone or in any batch; in fp32 the linear layers also run in fixed row
tiles (:mod:`models.engine.invariant`) so the result is bit-identical, and in bf16 it agrees within the
tolerance the tests state. Results come back in input order.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from transformers import Qwen3ForSequenceClassification, Qwen3Model

from models.engine.attention import PACKED
from models.engine.heads import HEAD_FILE, load_head
from models.engine.invariant import make_batch_invariant, tiled_rows
from models.engine.loading import (
    LM_HEAD,
    load_model,
    load_tokenizer,
    qwen3_config,
    require_file,
    resolve_base,
)
from models.engine.packing import Packed, last_non_pad, last_token, pack, plan_batches
from models.manifest import Manifest, load_manifest
from schemas.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from models.engine.remote import RemoteEmbeddingEngine

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INSTRUCTION = "Instruct: {task}\nQuery:{text}"


@dataclass(frozen=True, slots=True)
class Prediction:
    """The engine's answer for one text."""

    label_id: int
    probabilities: tuple[float, ...]
    truncated: bool
    n_tokens: int


@dataclass(frozen=True, slots=True)
class EngineInfo:
    name: str
    version: str
    kind: str
    labels: tuple[str, ...]
    max_length: int
    device: str
    dtype: str


@dataclass(frozen=True, slots=True)
class Tokenised:
    ids: list[list[int]]
    truncated: list[bool]

    def take(self, index: Sequence[int]) -> Tokenised:
        """The texts at ``index``, in that order."""
        return Tokenised([self.ids[i] for i in index], [self.truncated[i] for i in index])

    def part(self, start: int, stop: int) -> Tokenised:
        """The texts ``start`` to ``stop`` (a micro-batch's share of what was tokenised at once)."""
        return Tokenised(self.ids[start:stop], self.truncated[start:stop])

    def join(self, others: Sequence[Tokenised]) -> Tokenised:
        """These texts, then those of each of ``others`` (tokenised the same way), in order."""
        parts = [self, *others]
        return Tokenised([i for p in parts for i in p.ids], [t for p in parts for t in p.truncated])


@dataclass(frozen=True, slots=True)
class Inference:
    """Everything the engine computed for a list of texts, in input order, on the CPU."""

    logits: torch.Tensor  # [n, num_labels] float32
    features: torch.Tensor | None  # [n, d] float32: what the head reads (pooled, or normalised embedding)
    truncated: list[bool]
    n_tokens: list[int]

    @property
    def probabilities(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=-1)

    def predictions(self) -> list[Prediction]:
        """One :class:`Prediction` per text: the most probable label and every label's probability."""
        probs = self.probabilities
        labels = probs.argmax(-1).tolist()
        return [
            Prediction(label_id=label, probabilities=tuple(p), truncated=t, n_tokens=n)
            for label, p, t, n in zip(labels, probs.tolist(), self.truncated, self.n_tokens, strict=True)
        ]


class Classifier(Protocol):
    """What the worker needs from a model: classify texts, report health and limits."""

    info: EngineInfo
    max_batch_tokens: int
    max_batch_size: int

    def classify(self, texts: Sequence[str]) -> list[Prediction]: ...

    def tokenise(self, texts: Sequence[str]) -> Tokenised: ...

    def classify_tokenised(self, tok: Tokenised) -> list[Prediction]:
        """``classify`` for texts already tokenised by ``tokenise`` (the worker tokenises once)."""
        ...

    def warm_up(self) -> float: ...

    def health(self) -> bool:
        """Whether the model still computes: a real forward pass on a probe text, not a flag.

        The worker calls it when every text of a batch failed, to tell bad texts (healthy: dead
        letters) from a broken device (unhealthy: stop without committing)."""
        ...


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 when a GPU is present, else CPU with fp32; either can be forced."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return dev, DTYPES[dtype]


class Qwen3Engine(ABC):
    """Tokenise, batch, run the packed Qwen3 backbone, pool, apply the head (the shared part)."""

    def __init__(
        self,
        *,
        manifest: Manifest,
        backbone: Qwen3Model,
        head: nn.Module,
        tokenizer: Tokenizer,
        name: str,
        append_id: int | None = None,
        max_batch_tokens: int = 16384,
        max_batch_size: int = 256,
        compile: bool = False,
    ) -> None:
        """``backbone`` is already on its device and dtype; the engine switches it to packed attention.

        ``compile``: ``torch.compile`` each decoder layer (dynamic token count) so its norms, RoPE
        and activations run fused; CUDA only, costs a warm-up compile on the first batches.
        """
        if backbone.config._attn_implementation != PACKED:
            backbone.set_attn_implementation(PACKED)
        param = next(backbone.parameters())
        device, dtype = param.device, param.dtype
        self.manifest = manifest
        self.backbone = backbone
        self.head = head.to(device).float().eval()
        self.tokenizer = tokenizer
        self.append_id = append_id
        self.device, self.dtype = device, dtype
        self.max_batch_tokens, self.max_batch_size = max_batch_tokens, max_batch_size
        # fp32 promises bit-identical results alone and in a batch: fixed-tile GEMMs
        self.batch_invariant = dtype == torch.float32
        if self.batch_invariant:
            make_batch_invariant(self.backbone, reductions=device.type == "cuda")
            make_batch_invariant(self.head)
        if compile:
            if device.type != "cuda":
                raise ConfigError("compile needs a CUDA device")
            for layer in self.backbone.layers:
                layer.compile(dynamic=True)
        self.info = EngineInfo(
            name=name,
            version=manifest.version,
            kind=manifest.kind,
            labels=tuple(manifest.labels),
            max_length=manifest.max_length,
            device=str(device),
            dtype=str(dtype).removeprefix("torch."),
        )

    @abstractmethod
    def pool_offset(self, ids: Sequence[int]) -> int:
        """Which token of a text is pooled."""

    @abstractmethod
    def features(self, pooled: torch.Tensor) -> torch.Tensor:
        """What the head reads, from the pooled hidden states (float32)."""

    def tokenise(self, texts: Sequence[str]) -> Tokenised:
        """One batched call into the Rust tokenizer; ``truncated`` from its overflow record."""
        if self.manifest.instruction:
            texts = [INSTRUCTION.format(task=self.manifest.instruction, text=t) for t in texts]
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = [e.ids for e in encodings]
        if self.append_id is not None:
            ids = [[*i, self.append_id] for i in ids]
        return Tokenised(ids, [bool(e.overflowing) for e in encodings])

    def infer(self, texts: Sequence[str], *, keep_features: bool = False) -> Inference:
        """Logits (and optionally the head's input features) for ``texts``, in input order."""
        return self.infer_tokenised(self.tokenise(texts), keep_features=keep_features)

    def infer_tokenised(self, tok: Tokenised, *, keep_features: bool = False) -> Inference:
        """``infer`` for already tokenised texts."""
        lengths = [len(ids) for ids in tok.ids]
        order: list[int] = []
        logits: list[torch.Tensor] = []
        feats: list[torch.Tensor] = []
        for batch in plan_batches(
            lengths, max_batch_tokens=self.max_batch_tokens, max_batch_size=self.max_batch_size
        ):
            for part, (f, lg) in self._run(batch, tok.ids):
                order.extend(part)
                logits.append(lg)
                if keep_features:
                    feats.append(f)
        index = torch.tensor(order, dtype=torch.int64)
        num_labels = len(self.manifest.labels)
        out_logits = torch.empty(len(tok.ids), num_labels)
        out_feats = None
        if logits:  # one device→host copy for the whole call
            out_logits[index] = torch.cat(logits).cpu()
            if keep_features:
                stacked = torch.cat(feats).cpu()
                out_feats = torch.empty(len(tok.ids), stacked.shape[1])
                out_feats[index] = stacked
        return Inference(out_logits, out_feats, tok.truncated, lengths)

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        return self.classify_tokenised(self.tokenise(texts)) if texts else []

    def classify_tokenised(self, tok: Tokenised) -> list[Prediction]:
        return self.infer_tokenised(tok).predictions() if tok.ids else []

    def _run(
        self, batch: list[int], ids: list[list[int]]
    ) -> list[tuple[list[int], tuple[torch.Tensor, torch.Tensor]]]:
        """Forward one batch; on CUDA out-of-memory split it in two and retry each half."""
        try:
            return [(batch, self.forward([ids[i] for i in batch]))]
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(batch) // 2
            log.warning("CUDA out of memory on a batch of %d texts; splitting it", len(batch))
            return self._run(batch[:half], ids) + self._run(batch[half:], ids)

    @torch.inference_mode()
    def forward(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and logits (float32, on the engine's device) for already tokenised texts."""
        packed: Packed = pack(seqs, [self.pool_offset(s) for s in seqs]).to(self.device)
        hidden = self.backbone(
            input_ids=packed.input_ids,
            position_ids=packed.position_ids,
            cu_seq_lens_q=packed.cu_seqlens,
            cu_seq_lens_k=packed.cu_seqlens,
            max_length_q=packed.max_len,
            max_length_k=packed.max_len,
            use_cache=False,
        ).last_hidden_state[0]
        feats = self.features(hidden[packed.pool_index].float())
        return feats, self.head(feats)

    def warm_up(self) -> float:
        """Run texts of several lengths and batch sizes once (compiles, allocator, kernels); seconds."""
        start = time.perf_counter()
        lengths = (1, 7, 33, 150, self.manifest.max_length)
        self.classify(["好" * n for n in lengths])
        self.classify(["这个手机很好用" * (1 + i % 9) for i in range(self.max_batch_size)])
        return time.perf_counter() - start

    def health(self) -> bool:
        """One short text through the model (tokeniser, device, head); False when that fails."""
        try:
            [pred] = self.classify(["ok"])
        except Exception as exc:
            log.error("health probe failed: %r", exc)
            return False
        return all(p == p for p in pred.probabilities)  # NaN != NaN: a device returning garbage


class SequenceClassifierEngine(Qwen3Engine):
    """A Qwen3 with LoRA merged in and a classification (``score``) head.

    Scores as transformers' ``Qwen3ForSequenceClassification`` does on the checkpoint's own
    tokenizer output: the pooled token is the rightmost one whose id is not the pad id (with the
    Qwen3-Embedding tokenizer, which appends ``<|endoftext|>`` = pad, the last text token).
    """

    def __init__(
        self, model: Qwen3ForSequenceClassification, tokenizer: Tokenizer, manifest: Manifest, **kw: Any
    ) -> None:
        """Wrap an already loaded model (see :meth:`load`); ``kw``: :class:`Qwen3Engine`'s options."""
        self.pad_id: int | None = model.config.pad_token_id
        score = nn.Linear(model.config.hidden_size, len(manifest.labels), bias=False)
        score.weight.data.copy_(model.score.weight.data.float())
        super().__init__(manifest=manifest, backbone=model.model, head=score, tokenizer=tokenizer, **kw)

    @classmethod
    def load(cls, directory: Path, manifest: Manifest, *, device: str, dtype: str, **kw: Any) -> Self:
        if (directory / HEAD_FILE).is_file() and not (directory / "config.json").is_file():
            raise CheckpointError(
                f"{directory}/manifest.json: kind is 'sequence-classifier' but the directory holds "
                f"{HEAD_FILE} and no config.json: set kind to 'embedding-head'"
            )
        config = qwen3_config(directory)
        if config.num_labels != len(manifest.labels):
            raise CheckpointError(
                f"{directory}: manifest.json lists {len(manifest.labels)} labels "
                f"but the score head in config.json has {config.num_labels} outputs"
            )
        dev, dt = resolve_device(device, dtype)
        model = load_model(Qwen3ForSequenceClassification, directory, dt, dev)
        tokenizer, _ = load_tokenizer(directory, manifest.max_length, append_eos=False)  # as transformers
        return cls(model, tokenizer, manifest, name=manifest.name or directory.name, **kw)

    def pool_offset(self, ids: Sequence[int]) -> int:
        return last_token(ids) if self.pad_id is None else last_non_pad(ids, self.pad_id)

    def features(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled


class EmbeddingHeadEngine(Qwen3Engine):
    """A frozen Qwen3-Embedding base and a trained head (``head.safetensors``).

    The Qwen3-Embedding recipe: optional instruction prefix, ``<|endoftext|>`` appended, the last
    token's hidden state pooled, optional MRL truncation to ``dimensions``, then L2 normalisation;
    the head reads that unit vector.
    """

    def __init__(
        self, backbone: Qwen3Model, head: nn.Module, tokenizer: Tokenizer, manifest: Manifest, **kw: Any
    ) -> None:
        """Wrap an already loaded base and head (see :meth:`load`); ``kw``: :class:`Qwen3Engine`'s options."""
        self.dimensions = manifest.dimensions or backbone.config.hidden_size
        super().__init__(manifest=manifest, backbone=backbone, head=head, tokenizer=tokenizer, **kw)

    @classmethod
    def load(cls, directory: Path, manifest: Manifest, *, device: str, dtype: str, **kw: Any) -> Self:
        if not (directory / HEAD_FILE).is_file() and (directory / "config.json").is_file():
            raise CheckpointError(
                f"{directory}/manifest.json: kind is 'embedding-head' but the directory has no {HEAD_FILE} "
                "and holds a config.json: if it is a Qwen3ForSequenceClassification, set kind to "
                "'sequence-classifier'"
            )
        require_file(directory, HEAD_FILE, why="the trained head of an embedding-head checkpoint")
        base = resolve_base(manifest.base_model, directory)
        config = qwen3_config(base)
        dims = manifest.dimensions or config.hidden_size
        if dims > config.hidden_size:
            raise CheckpointError(
                f"{directory}/manifest.json: dimensions is {dims} but the base model's hidden size is "
                f"{config.hidden_size}"
            )
        head = load_head(directory, in_dim=dims, num_labels=len(manifest.labels))
        dev, dt = resolve_device(device, dtype)
        backbone = load_model(Qwen3Model, base, dt, dev, dropped=LM_HEAD)  # a causal-LM base's head
        tokenizer, append_id = load_tokenizer(base, manifest.max_length, append_eos=True)
        return cls(backbone, head, tokenizer, manifest, name=manifest.name or directory.name,
                   append_id=append_id, **kw)  # fmt: skip

    def pool_offset(self, ids: Sequence[int]) -> int:
        return last_token(ids)

    def features(self, pooled: torch.Tensor) -> torch.Tensor:
        def unit(rows: torch.Tensor) -> torch.Tensor:
            return F.normalize(rows[:, : self.dimensions], p=2.0, dim=-1)

        return tiled_rows(unit, pooled) if self.batch_invariant else unit(pooled)


ENGINES: dict[str, type[SequenceClassifierEngine] | type[EmbeddingHeadEngine]] = {
    "sequence-classifier": SequenceClassifierEngine,
    "embedding-head": EmbeddingHeadEngine,
}


def load_classifier(
    directory: Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    max_batch_tokens: int = 16384,
    max_batch_size: int = 256,
    compile: bool = False,
    embedding_url: str | None = None,
    embedding_model: str | None = None,
    embedding_api_key: str | None = None,
) -> Qwen3Engine | RemoteEmbeddingEngine:
    """Open a checkpoint directory offline (safetensors only, no remote code) by its manifest.

    ``embedding_url`` (or the manifest's): an ``embedding-head`` checkpoint gets its embeddings from
    that OpenAI-compatible server (:mod:`models.engine.remote`) instead of a local base;
    ``embedding_api_key`` is sent as ``Authorization: Bearer …``.
    """
    manifest = load_manifest(directory)
    if max_batch_tokens < manifest.max_length:
        raise ConfigError(
            f"max_batch_tokens ({max_batch_tokens}) must be at least the checkpoint's max_length "
            f"({manifest.max_length}), or its longest texts could never run"
        )
    url = embedding_url or manifest.embedding_url
    if url:
        if manifest.kind != "embedding-head":
            raise ConfigError(
                f"{directory}: an embedding URL serves embedding-head checkpoints, not {manifest.kind}"
            )
        from models.engine.remote import RemoteEmbeddingEngine

        return RemoteEmbeddingEngine.load(
            directory, manifest, url=url, model=embedding_model, api_key=embedding_api_key,
            max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
        )  # fmt: skip
    engine = ENGINES[manifest.kind].load(
        directory,
        manifest,
        device=device,
        dtype=dtype,
        max_batch_tokens=max_batch_tokens,
        max_batch_size=max_batch_size,
        compile=compile,
    )
    fitted = manifest.fitted_dtype
    if fitted and fitted != engine.info.dtype:
        log.warning(
            "%s: the head was fitted on %s features but runs in %s here; labels near the decision "
            "boundary may differ from the recorded evaluation (--dtype %s matches it)",
            directory, fitted, engine.info.dtype, fitted,
        )  # fmt: skip
    return engine
