"""``sentiment train head``: a frozen Qwen3-Embedding base plus a trained classification head.

Texts are embedded once through the serving engine (the Qwen3-Embedding recipe: instruction,
``<|endoftext|>``, last-token pooling, MRL cut, L2 normalisation) and the vectors are cached on
disk, keyed by the base model, instruction, dimensions, max length, dtype and the texts. The head
is then fitted on the cached vectors in seconds:

- ``linear`` (default): multinomial logistic regression (scikit-learn's lbfgs) with balanced class
  weights; its L2 strength is chosen on the dev split by macro-F1.
- ``mlp``: Linear → GELU → Linear with AdamW, the best epoch on dev kept.
"""

from __future__ import annotations

import hashlib
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm
from transformers import Qwen3Model
from transformers.utils import logging as hf_logging

from models.engine.cache import CachedClassifier, open_cache, redact
from models.engine.classifier import EmbeddingHeadEngine, resolve_device
from models.engine.heads import HeadType, build_head, save_embedding_head_checkpoint
from models.engine.loading import LM_HEAD, base_reference, load_model, load_tokenizer, qwen3_config
from models.engine.remote import EmbeddingServerError, RemoteEmbeddingEngine, endpoint
from models.manifest import Manifest, atomic_directory
from models.training.data import LabelledText, Prepared
from models.training.embedding_analysis import analyse
from models.training.evaluation import evaluate
from models.training.plots import projection_png
from models.training.reporting import report_checkpoint
from schemas.errors import ConfigError

L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2)
MISSING_CLASS_LOGIT = -1e4  # the intercept of a class with no training text: probability 0
CHUNK = 1024  # texts per engine call (one progress-bar step)
CACHE_TTL_S = 86_400.0  # --cache-url entries: the worker's default --cache-ttl-s


def base_fingerprint(base: Path) -> str:
    """Identifies the base's weights cheaply: config.json's bytes and each weights file's size and mtime."""
    h = hashlib.sha256((base / "config.json").read_bytes())
    for path in sorted(base.glob("*.safetensors")):
        st = path.stat()
        h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


class EmbeddingCache:
    """``cache_dir/<key>.safetensors``: one file per (embedder, settings, list of texts); the
    embedder is a local base (its path and :func:`base_fingerprint`) or a server (URL and model)."""

    def __init__(self, cache_dir: Path, *, embedder: dict[str, str], settings: dict[str, Any]) -> None:
        self.dir = cache_dir
        self.prefix = {**embedder, **settings}

    def path(self, texts: Sequence[str]) -> Path:
        h = hashlib.sha256(orjson.dumps(self.prefix, option=orjson.OPT_SORT_KEYS))
        for t in texts:
            h.update(t.encode() + b"\x00")
        return self.dir / f"{h.hexdigest()[:32]}.safetensors"

    def get(self, texts: Sequence[str]) -> torch.Tensor | None:
        path = self.path(texts)
        return load_file(str(path))["features"] if path.is_file() else None

    def put(self, texts: Sequence[str], features: torch.Tensor) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(texts)
        tmp = path.with_suffix(".tmp")
        save_file({"features": features.contiguous()}, str(tmp), metadata={"n": str(len(texts))})
        tmp.replace(path)


def embed(
    engine: EmbeddingHeadEngine | RemoteEmbeddingEngine | CachedClassifier,
    texts: Sequence[str],
    cache: EmbeddingCache,
    what: str,
) -> torch.Tensor:
    """Unit embeddings of ``texts`` ([n, dimensions], float32), from the cache when present.

    ``engine`` behind a :class:`CachedClassifier` (``--cache-url``): each text is looked up in
    the workers' shared embedding cache too, and what is computed here is written there."""
    cached = cache.get(texts)
    if cached is not None:
        return cached
    parts = []
    with tqdm(total=len(texts), desc=f"embedding {what}", unit="text", disable=None) as bar:
        for start in range(0, len(texts), CHUNK):
            chunk = texts[start : start + CHUNK]
            if isinstance(engine, CachedClassifier):
                parts.append(engine.embed_tokenised(engine.tokenise(chunk)))
            else:
                result = engine.infer(chunk, keep_features=True)
                assert result.features is not None
                parts.append(result.features)
            bar.update(len(chunk))
    features = torch.cat(parts) if parts else torch.empty(0, engine.dimensions)
    cache.put(texts, features)
    return features


def remote_embedder(
    out: Path, manifest: Manifest, local: Path | None, api_key: str | None, batch_tokens: int
) -> RemoteEmbeddingEngine:
    """The client of ``manifest.embedding_url``, its width asked of the server (one request)."""
    assert manifest.embedding_url
    tokenizer, append_id = (
        load_tokenizer(local, manifest.max_length, append_eos=True) if local is not None else (None, None)
    )
    engine = RemoteEmbeddingEngine(
        manifest, build_head("linear", 1, len(manifest.labels)),  # replaced once the width is known
        url=manifest.embedding_url, model=manifest.embedding_model or manifest.base_model,
        dimensions=manifest.dimensions or 1, tokenizer=tokenizer, append_id=append_id,
        name=manifest.name or out.name, max_batch_tokens=batch_tokens, api_key=api_key,
    )  # fmt: skip
    try:
        width = engine.post([engine.text_of(engine.tokenise(["ok"]).ids[0])]).shape[1]
    except EmbeddingServerError as exc:
        engine.close()
        raise ConfigError(str(exc)) from None
    if manifest.dimensions is not None and manifest.dimensions > width:
        engine.close()
        raise ConfigError(f"--dimensions {manifest.dimensions}: the server's embeddings have {width}")
    engine.dimensions = manifest.dimensions or width
    engine.head = build_head("linear", engine.dimensions, len(manifest.labels)).eval()  # placeholder
    return engine


def class_weights(y: torch.Tensor, k: int) -> torch.Tensor:
    """Balanced weights n / (k · count) (a missing class gets weight 0)."""
    counts = torch.bincount(y, minlength=k).double()
    return torch.where(counts > 0, len(y) / (k * counts.clamp(min=1)), 0.0).float()


def fit_linear(x: torch.Tensor, y: torch.Tensor, k: int, l2: float, weights: torch.Tensor) -> nn.Sequential:
    """Logistic regression on ``x`` minimising the ``weights``-weighted mean cross-entropy plus
    ``l2 · ‖W‖²`` (the intercepts not penalised): scikit-learn's ``LogisticRegression`` (lbfgs),
    copied into the ``nn.Linear`` head an ``embedding-head`` checkpoint stores.

    scikit-learn minimises ``C · Σ sᵢ · CEᵢ + ½ ‖β‖²`` with sample weights ``sᵢ = weights[yᵢ]``, so
    ``C = 1 / (2 · l2 · Σ sᵢ)`` for three or more classes. Two classes are one row ``β`` with the
    logit ``z`` of the second; the [k, d] equivalent is ``W = [-β/2, β/2]`` (the same softmax, and
    the least ‖W‖² among all that give it), whose penalty ``l2 · ‖β‖² / 2`` makes
    ``C = 1 / (l2 · Σ sᵢ)``. A class with no training text gets a zero row and a very negative
    intercept (probability 0): the objective's infimum, as its unpenalised intercept runs to -∞.
    """
    from sklearn.linear_model import LogisticRegression  # the [train] extra, required by train head

    head = build_head("linear", x.shape[1], k)
    linear = head[0]
    assert isinstance(linear, nn.Linear)
    sample_weight = weights.cpu()[y.cpu()].double()
    present = sorted(set(y.tolist()))
    weight = torch.zeros(k, x.shape[1], dtype=torch.float64)
    bias = torch.full((k,), MISSING_CLASS_LOGIT, dtype=torch.float64)
    if len(present) == 1:  # nothing to separate: every text is that class
        bias[present[0]] = 0.0
    else:
        binary = len(present) == 2
        # tol 1e-6: the objective's minimum to ~6 digits (the default 1e-4 can stop short of it)
        model = LogisticRegression(
            C=1 / ((1 if binary else 2) * l2 * float(sample_weight.sum())), tol=1e-6, max_iter=1000
        )
        model.fit(x.detach().float().cpu().numpy(), y.cpu().numpy(), sample_weight=sample_weight.numpy())
        coef, intercept = torch.from_numpy(model.coef_).double(), torch.from_numpy(model.intercept_).double()
        if binary:
            coef, intercept = torch.cat([-coef, coef]) / 2, torch.cat([-intercept, intercept]) / 2
        weight[present], bias[present] = coef, intercept
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return head.eval()


def fit_mlp(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    weights: torch.Tensor,
    dev: tuple[torch.Tensor, list[int]],
    labels: Sequence[str],
    *,
    epochs: int = 60,
    seed: int = 0,
) -> nn.Sequential:
    torch.manual_seed(seed)
    head = build_head("mlp", x.shape[1], k)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    best, best_state = -1.0, head.state_dict()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        head.train()
        for batch in torch.randperm(len(y), generator=generator).split(128):
            loss = nn.functional.cross_entropy(head(x[batch]), y[batch], weight=weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            f1 = evaluate(labels, dev[1], head(dev[0]).softmax(-1)).macro_f1
        if f1 > best:
            best, best_state = f1, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    return head.eval()


def train_head(
    base: Path | str,
    data: Prepared,
    labels: Sequence[str],
    out: Path,
    *,
    cache_dir: Path,
    head_type: HeadType = "linear",
    instruction: str | None = None,
    dimensions: int | None = None,
    max_length: int = 512,
    device: str = "auto",
    dtype: str = "auto",
    batch_tokens: int = 16384,
    seed: int = 0,
    name: str | None = None,
    embedding_url: str | None = None,
    embedding_model: str | None = None,
    embedding_api_key: str | None = None,
    cache_url: str | None = None,
    echo: Callable[[str], None] = print,
) -> Path:
    """Embed ``data`` with the frozen ``base``, fit the head, write an ``embedding-head`` checkpoint.

    With ``embedding_url`` the embeddings come from that OpenAI-compatible server (serving
    ``embedding_model``, default ``base``) and the manifest records both, so the worker uses it
    too; ``base`` may then be a name only (no local files: token counts are UTF-8 bytes and the
    server truncates), or a local copy whose tokenizer cuts texts at ``max_length`` here.
    ``cache_url``: the workers' shared cache (:mod:`models.engine.cache`), read and written per text.
    """
    started = time.perf_counter()
    hf_logging.disable_progress_bar()
    if out.exists():
        raise ConfigError(f"{out} already exists; choose another --out or remove it")
    local = Path(base) if Path(base).is_dir() else None
    if local is None and not embedding_url:
        raise ConfigError(f"base {base}: no such directory")
    hidden = qwen3_config(local).hidden_size if local is not None else None
    if dimensions is not None and not 0 < dimensions <= (hidden or dimensions):
        raise ConfigError(f"--dimensions must be between 1 and the base's hidden size ({hidden})")
    dev, dt = resolve_device(device, dtype)
    manifest = Manifest(  # type: ignore[call-arg]  # features: an extra field, kept as is
        kind="embedding-head",
        base_model=base_reference(local, out) if local is not None else str(base),
        labels=list(labels),
        max_length=max_length,
        instruction=instruction,
        dimensions=dimensions,
        name=name or out.name,
        version="1",
        embedding_url=embedding_url,
        embedding_model=embedding_model,
        # the head is fitted on features computed here; evaluation and serving should match them
        features=(
            {"server": endpoint(embedding_url), "dtype": "float32"}
            if embedding_url
            else {"device": dev.type, "dtype": str(dt).removeprefix("torch.")}
        ),
    )
    settings = {"instruction": instruction, "dimensions": dimensions, "max_length": max_length}
    engine: EmbeddingHeadEngine | RemoteEmbeddingEngine
    if embedding_url:
        engine = remote_embedder(out, manifest, local, embedding_api_key, batch_tokens)
        echo(f"embedding through {engine.url} (model {engine.model!r}, {engine.dimensions} dimensions)")
        embedder = {"server": engine.url, "model": engine.model, "tokens": "base" if local else "bytes"}
    else:
        assert local is not None and hidden is not None
        tokenizer, append_id = load_tokenizer(local, max_length, append_eos=True)
        backbone = load_model(Qwen3Model, local, dt, dev, dropped=LM_HEAD)  # a causal-LM base's head
        placeholder = build_head("linear", dimensions or hidden, len(labels))  # only features are read
        engine = EmbeddingHeadEngine(
            backbone,
            placeholder,
            tokenizer,
            manifest,
            name=manifest.name or "",
            append_id=append_id,
            max_batch_tokens=batch_tokens,
        )
        embedder = {"base": str(local.resolve()), "weights": base_fingerprint(local)}
        settings["dtype"] = str(dt)
    cache = EmbeddingCache(cache_dir, embedder=embedder, settings=settings)
    embedder_engine: EmbeddingHeadEngine | RemoteEmbeddingEngine | CachedClassifier = engine
    if cache_url:
        store = open_cache(cache_url, max_entries=1, ttl_s=CACHE_TTL_S)
        embedder_engine = CachedClassifier(engine, store)
        echo(f"embeddings also read from and written to {redact(cache_url)}")
    k = len(labels)

    def xy(part: Sequence[LabelledText], what: str) -> tuple[torch.Tensor, list[int]]:
        return embed(embedder_engine, [ex.text for ex in part], cache, what), [
            list(labels).index(ex.label) for ex in part
        ]

    embed_start = time.perf_counter()
    x_train, y_train = xy(data.splits.train, "train")
    x_dev, y_dev = xy(data.splits.dev, "dev")
    embed_seconds = time.perf_counter() - embed_start
    echo(f"embedding analysis: k-means ({k} clusters) and a t-SNE map of the train embeddings…")
    analysis = analyse(x_train, y_train, k, seed=seed)
    echo(
        f"k-means with {k} clusters on {analysis.kmeans_points:,} train embeddings: adjusted Rand index "
        f"{analysis.ari:.3f} against the labels (1: the clusters are the labels; 0: chance)"
    )
    y = torch.as_tensor(y_train)
    weights = class_weights(y, k)
    search: list[dict[str, float]] = []
    if head_type == "linear":
        best: tuple[float, nn.Sequential] | None = None
        for l2 in L2_GRID:
            candidate = fit_linear(x_train, y, k, l2, weights)
            with torch.no_grad():
                f1 = evaluate(labels, y_dev, candidate(x_dev).softmax(-1)).macro_f1
            search.append({"l2": l2, "dev_macro_f1": f1})
            echo(f"linear head, L2 {l2:g}: dev macro-F1 {f1:.4f}")
            if best is None or f1 > best[0]:
                best = (f1, candidate)
        assert best is not None
        head = best[1]
    else:
        head = fit_mlp(x_train, y, k, weights, (x_dev, y_dev), labels, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out) as tmp:
        save_embedding_head_checkpoint(tmp, head, manifest)
        training: dict[str, Any] = {
            "mode": "head",
            "head": head_type,
            "seed": seed,
            "l2_search": search,
            "embedding_analysis": analysis.record(),
            "class_weights": weights.tolist(),
            "data": data.sources,
            "notes": data.notes,
            "embedding_seconds": round(embed_seconds, 1),
            "texts_embedded": len(x_train) + len(x_dev),
            "seconds": round(time.perf_counter() - started, 1),
            "torch": torch.__version__,
            "device": str(dev),
            "machine": platform.machine(),
        }
        parts = {"dev": (data.splits.dev, data.sources["dev"])}
        if data.splits.test:
            parts["test"] = (data.splits.test, data.sources["test"])
        report_checkpoint(
            tmp, parts, training=training, device=str(dev), echo=echo, embedding_api_key=embedding_api_key
        )
        projection_png(
            x_train, y_train, labels, tmp / "embeddings-train.png", tsne=(analysis.tsne, analysis.tsne_index),
            title=f"train embeddings; k-means ({k} clusters) ARI against the labels: {analysis.ari:.3f}",
        )  # fmt: skip
    if isinstance(engine, RemoteEmbeddingEngine):
        engine.close()
    echo(f"\nwrote {out} in {time.perf_counter() - started:.0f} s")
    return out
