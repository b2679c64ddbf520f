"""POST /v1/embeddings, /v1/fill-mask and /v1/classify: model work other than generation."""
from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter, Depends

from ..infer.classify import classify_texts
from ..infer.embed import embed_ids, encode_for_embedding
from ..infer.fill_mask import fill_mask as predict
from .errors import APIError
from .schemas import ClassifyRequest, EmbeddingRequest, FillMaskRequest
from .state import MAX_INPUTS, ServerDep, check_key, listed

router = APIRouter(dependencies=[Depends(check_key)])


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, server: ServerDep):
    """Mean-pooled final hidden states, unit length, in OpenAI's shape (float or base64 float32)."""
    server.check_model(body.model)
    model = server.model
    if body.dimensions is not None and body.dimensions != model.config.n_embd:
        raise APIError(400, f"dimensions must be {model.config.n_embd} (this model's width) or left out, got "
                            f"{body.dimensions}", param="dimensions")
    rows = []
    for i, item in enumerate(listed(body.input, "texts or token lists", "input")):
        if isinstance(item, str) and not item:
            raise APIError(400, f"input {i} is an empty string", param="input")
        if not isinstance(item, str) and not item:
            raise APIError(400, f"input {i} is an empty token list", param="input")
        rows.append(encode_for_embedding(model, server.tokenizer, item) if isinstance(item, str)
                    else server.encode_prompt(item, "input"))
    vectors = await server.run_call(lambda: embed_ids(model, rows))
    data = []
    for i, vector in enumerate(vectors.numpy().astype(np.float32)):
        encoded = base64.b64encode(vector.astype("<f4").tobytes()).decode() if body.encoding_format == "base64" \
            else vector.tolist()
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    tokens = sum(map(len, rows))
    return {"object": "list", "data": data, "model": server.options.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


@router.post("/v1/fill-mask")
async def fill_mask(body: FillMaskRequest, server: ServerDep):
    """The top_k tokens for each [MASK] of the text (encoders with a masked-LM head)."""
    server.check_model(body.model)
    found = await server.run_call(lambda: predict(server.model, server.tokenizer, body.text, body.top_k))
    return {"object": "list", "model": server.options.model_name,
            "masks": [{"index": i, "predictions": [{"token": t, "probability": p} for t, p in mask]}
                      for i, mask in enumerate(found)]}


@router.post("/v1/classify")
async def classify(body: ClassifyRequest, server: ServerDep):
    """A label and the probability of every label for each text (models fine-tuned to classify)."""
    server.check_model(body.model)
    texts = [body.texts] if isinstance(body.texts, str) else body.texts
    pairs = [body.text_pairs] if isinstance(body.text_pairs, str) else body.text_pairs
    if not texts or len(texts) > MAX_INPUTS:
        raise APIError(400, f"texts must hold 1 to {MAX_INPUTS} texts", param="texts")
    if pairs is not None and len(pairs) != len(texts):
        raise APIError(400, f"got {len(texts)} texts but {len(pairs)} text_pairs", param="text_pairs")
    labels = server.lm.config.model.labels
    found = await server.run_call(lambda: classify_texts(server.model, server.tokenizer, labels, texts, pairs))
    return {"object": "list", "model": server.options.model_name,
            "data": [{"index": i, "label": label, "probabilities": probs} for i, (label, probs) in enumerate(found)]}
