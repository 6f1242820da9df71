"""The naive baseline: what the one-file BLIP x CLIP seed does, as its README describes.

One FastAPI process under uvicorn; `POST /embed-image/` reads the upload, opens it with
PIL, captions it with BLIP (`gen_caption`) and embeds it with CLIP (`gen_embedding`),
one image per model call, no batching, models loaded once at import. The handler is
`async def` and calls the models inline, as such apps usually do, so requests run one
after another; a plain `def` handler would run up to 40 of them at once in threads,
each with all of torch's threads, which is slower still on few cores.

    python -m benchmarks.naive_seed --blip DIR --clip DIR --port 8765 [--dtype float32]

`--dtype float32` is the seed as written (`from_pretrained` defaults); `--dtype
bfloat16` gives it the served system's dtype, so that the comparison shows batching
alone. Loopback only; started and stopped by benchmarks/suite.py.
"""

from __future__ import annotations

import argparse
import io
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image
from transformers import (
    BlipForConditionalGeneration,
    BlipProcessor,
    CLIPModel,
    CLIPProcessor,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_app(blip_dir: str, clip_dir: str, dtype: torch.dtype, max_new_tokens: int) -> FastAPI:
    # Like the seed: the GPU when there is one.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    blip_processor: Any = BlipProcessor.from_pretrained(blip_dir)
    blip_model: Any = BlipForConditionalGeneration.from_pretrained(blip_dir, dtype=dtype)
    blip_model = blip_model.to(device).eval()
    clip_processor: Any = CLIPProcessor.from_pretrained(clip_dir)
    clip_model: Any = CLIPModel.from_pretrained(clip_dir, dtype=dtype)
    clip_model = clip_model.to(device).eval()
    app = FastAPI()

    def gen_caption(image: Image.Image) -> str:
        inputs = blip_processor(images=image, return_tensors="pt")
        with torch.no_grad():
            out = blip_model.generate(
                pixel_values=inputs["pixel_values"].to(device, dtype),
                max_new_tokens=max_new_tokens,
            )
        return str(blip_processor.decode(out[0], skip_special_tokens=True))

    def gen_embedding(image: Image.Image) -> list[float]:
        inputs = clip_processor(images=image, return_tensors="pt")
        with torch.no_grad():
            features = clip_model.get_image_features(
                pixel_values=inputs["pixel_values"].to(device, dtype)
            ).pooler_output
        features = features.float()
        features = features / features.norm(dim=-1, keepdim=True)
        return [float(x) for x in features[0].cpu()]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/embed-image/")
    async def embed_image(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008
        image = Image.open(io.BytesIO(await file.read())).convert("RGB")
        description = gen_caption(image)
        return {"description": description, "embedding_vector": gen_embedding(image)}

    # The seed's roadmap search by image, as naive as the rest: one CLIP call per
    # request (its k-NN over the few vectors it would hold costs nothing beside it).
    @app.post("/search/image")
    async def search_image(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008
        image = Image.open(io.BytesIO(await file.read())).convert("RGB")
        gen_embedding(image)
        return {"results": []}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blip", required=True)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    args = parser.parse_args()
    app = build_app(args.blip, args.clip, _DTYPES[args.dtype], args.max_new_tokens)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
